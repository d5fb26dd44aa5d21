"""The verbs that read the mesh and its tasks: peers, status, models, tasks, result, cancel, dash."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from zmqllm.cli.common import EXIT_USAGE, CliError, client_options, query, show
from zmqllm.client import AsyncClient
from zmqllm.node import paths

@click.command()
@client_options
def peers(connect: str, timeout: float, as_json: bool) -> None:
    """List every node of the mesh: name, state, endpoint, models, load.

    \b
    Example:
      zmqllm peers --connect tcp://hostA:5555 --json
    """
    from zmqllm.cli.render import peer_table

    show(query(connect, timeout, lambda c: c.peers()), as_json, peer_table)


@click.command()
@client_options
def status(connect: str, timeout: float, as_json: bool) -> None:
    """Show the answering node: id, uptime, tasks, protocol version."""
    from zmqllm.cli.render import status_lines

    show(query(connect, timeout, lambda c: c.status()), as_json, status_lines)


@click.command()
@client_options
def models(connect: str, timeout: float, as_json: bool) -> None:
    """List every model in the mesh: the nodes that serve it, those that have it loaded now, context, slots,
    chat.

    A node serving several models (--model repeated, or --models-dir) loads each on first use: a model it
    serves but has not loaded answers after a cold load.
    """
    from zmqllm.cli.render import model_rows, model_table

    show(model_rows(query(connect, timeout, lambda c: c.peers())), as_json, model_table)


@click.command()
@client_options
def tasks(connect: str, timeout: float, as_json: bool) -> None:
    """List the tasks the answering node accepted (newest first), from its journal.

    \b
    Example:
      zmqllm tasks --json
    """
    from zmqllm.cli.render import task_table

    show(list((query(connect, timeout, lambda c: c.request("GET_TASKS")))["tasks"]), as_json, task_table)


@click.command()
@click.argument("task_id")
@client_options
def result(task_id: str, connect: str, timeout: float, as_json: bool) -> None:
    """Print one task's result (text, or how it ended), through any node of the mesh.

    A node that did not accept the task asks its peers which one did (the origin, or
    the node its client moved to) and forwards the question there."""

    async def call(client: AsyncClient) -> dict[str, Any]:
        return dict((await client.request("GET_RESULT", task_id=task_id))["task"])

    found = query(connect, timeout, call)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    elif "error" in found:
        raise CliError(f"task {task_id} {found['state']}: {found['error']['code']}: {found['error']['message']}")
    else:
        click.echo(found.get("text", ""))


@click.command()
@click.argument("task_id")
@client_options
def cancel(task_id: str, connect: str, timeout: float, as_json: bool) -> None:
    """Cancel a task through any node of the mesh; prints how it ended.

    The node asked forwards the cancel to the task's origin when it is not that
    node. A task that had finished already prints its end (done or error)."""

    async def call(client: AsyncClient) -> dict[str, Any]:
        reply = await client.request("CANCEL", task_id=task_id)
        return {"type": reply.type.lower(), **reply.fields}

    result = query(connect, timeout, call)
    click.echo(json.dumps(result) if as_json else f"{task_id}: {result.get('finish_reason', result['type'])}")


@click.command()
@click.option("--record", type=click.Path(dir_okay=False), help="also write every event to this file (JSON Lines)")
@click.option("--replay", type=click.Path(dir_okay=False), help="show a recorded session instead of a live mesh")
@click.option("--speed", type=float, default=1.0, show_default=True, help="replay speed factor")
@click.option("--connect", metavar="ENDPOINT", default=paths.default_connect, envvar="ZMQLLM_CONNECT",
              show_default="$ZMQLLM_CONNECT, the last `zmqllm up`, or " + paths.DEFAULT_CONNECT,
              help="any node of the mesh; the dashboard finds the rest [env: ZMQLLM_CONNECT]")
def dash(record: str | None, replay: str | None, speed: float, connect: str) -> None:
    """The live dashboard: message graph, peers, tasks, event trace; inject and cancel tasks.

    It connects to one node, learns every peer and subscribes to each (a node
    only sees its own traffic). Keys: ? help, i inject, c cancel, / filter,
    p pause, q quit.

    \b
    Examples:
      zmqllm dash --connect tcp://hostA:5555
      zmqllm dash --record session.zrec
      zmqllm dash --replay session.zrec --speed 4
    """
    from zmqllm.tui.app import DashboardError, run_dashboard

    try:
        sys.exit(run_dashboard(connect, record=record, replay=replay, speed=speed))
    except DashboardError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None

"""The workflow verbs of the command line: `run`, `runs`, `workflows validate`.

Kept apart from `cli.py` (which registers them) so each module stays readable;
the same exit codes and options apply (docs: README, docs/workflows.md).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from zmqllm.cli.common import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    client_options,
    query,
    show,
    read_prompt,
)
from zmqllm.client import AsyncClient, MeshUnreachable, RequestFailed
from zmqllm.workflow import WorkflowError, load_workflow

PEER_QUERY_TIMEOUT_S = 3.0
"""`zmqllm runs` waits at most this long for each other node's listing."""


@click.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--input", "input_text", default="", metavar="TEXT", help="the run's {input}: text, @FILE or - (stdin)")
@click.option("--resume", "resume_id", metavar="RUN_ID", help="continue an interrupted or failed run: "
              "tasks that finished are not run again")
@click.option("--attach", "attach_id", metavar="RUN_ID", help="follow a run that is going on")
@click.option("--run-id", help="your own id for a new run (default: a fresh one)")
@client_options
def run(spec: str | None, input_text: str, resume_id: str | None, attach_id: str | None, run_id: str | None,
        connect: str, timeout: float, as_json: bool) -> None:
    """Run a workflow (a TOML spec) on the mesh; the node at --connect orchestrates it.

    Every step is an ordinary task placed on the mesh's nodes; independent
    steps and fan-out branches run in parallel. Progress goes to stderr, the
    final output to stdout; --json prints every event as JSON Lines. Ctrl-C
    cancels the run; a run cut short by a crash continues with --resume.

    \b
    Examples:
      zmqllm run configs/workflows/draft-critique-revise.toml --input "Write a product update about X"
      zmqllm run configs/workflows/ensemble.toml --input @question.txt --json
      zmqllm run --resume 3f2a9c1d0b7e
      zmqllm runs
    """
    from zmqllm.cli.stream_run import follow_run

    modes = sum(x is not None for x in (spec, resume_id, attach_id))
    if modes != 1:
        raise CliError("give one of: a SPEC file, --resume RUN_ID or --attach RUN_ID", EXIT_USAGE)
    kwargs: dict[str, Any]
    if spec is not None:
        try:
            workflow = load_workflow(spec)
        except WorkflowError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        kwargs = {"run_id": run_id or uuid.uuid4().hex[:12], "spec": Path(spec).read_text(encoding="utf-8"),
                  "source": Path(spec).name, "input": read_prompt(input_text) if input_text else ""}
        if "input" in _needs_input(workflow) and not kwargs["input"]:
            raise CliError(f"{spec}: the workflow uses {{input}}: give --input TEXT, @FILE or -", EXIT_USAGE)
    else:
        kwargs = {"run_id": resume_id or attach_id, "resume": resume_id is not None, "attach": attach_id is not None}
    try:
        code = asyncio.run(follow_run(connect, timeout, as_json, **kwargs))
    except MeshUnreachable as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    except RequestFailed as exc:
        raise CliError(exc.message, EXIT_USAGE if exc.code == "bad_request" else 1) from None
    sys.exit(code)


def _needs_input(workflow: Any) -> set[str]:
    """Every variable the workflow's templates use (and the variables it splits)."""
    from zmqllm.workflow.template import fields

    names: set[str] = set()
    for step in workflow.steps:
        templates = [step.prompt, step.merge_prompt, step.text, *(stage.prompt for stage in step.stages)]
        for template in filter(None, templates):
            names |= fields(template)
        if step.split:
            names.add(step.split)
    return names


@click.command()
@click.option("--here", is_flag=True, help="only the answering node's own runs and the replicas it holds")
@client_options
def runs(here: bool, connect: str, timeout: float, as_json: bool) -> None:
    """List the mesh's workflow runs (newest first), each with the node that orchestrates it.

    Every live node is asked; a run appears once, as its orchestrator tells it
    (a node that adopted it after its first orchestrator was lost, or a replica
    holder while the adoption is pending). --here asks only the --connect node.

    \b
    Example:
      zmqllm runs --json
    """
    from zmqllm.cli.render import run_table

    show(query(connect, timeout, lambda c: c.runs() if here else _mesh_runs(c, timeout)), as_json, run_table)


async def _mesh_runs(client: AsyncClient, timeout: float) -> list[dict[str, Any]]:
    """Every live node's runs, merged: one row per run. A node that does not answer in time is left out."""
    from zmqllm.core.lookup import merge_run_rows

    rows = list(await client.runs())
    others = [row["endpoint"] for row in await client.peers() if not row.get("self") and row["state"] == "alive"]

    async def ask(endpoint: str) -> list[dict[str, Any]]:
        try:
            async with AsyncClient(endpoint, min(timeout, PEER_QUERY_TIMEOUT_S)) as other:
                return await other.runs()
        except (MeshUnreachable, RequestFailed):
            return []

    for more in await asyncio.gather(*(ask(endpoint) for endpoint in others)):
        rows.extend(more)
    return merge_run_rows(rows)


@click.group()
def workflows() -> None:
    """Workflow spec files (docs/workflows.md)."""


@workflows.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="one JSON document: a row per file")
def validate(files: tuple[str, ...], as_json: bool) -> None:
    """Check workflow specs without running them; exit 2 if any is invalid.

    \b
    Example:
      zmqllm workflows validate configs/workflows/*.toml
    """
    rows = []
    for path in files:
        try:
            workflow = load_workflow(path)
        except WorkflowError as exc:
            rows.append({"file": path, "ok": False, "error": str(exc)})
            continue
        rows.append({"file": path, "ok": True, "workflow": workflow.name,
                     "steps": [step.name for step in workflow.steps], "output": workflow.output})
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if row["ok"]:
                click.echo(f"ok  {row['file']}: {row['workflow']}, steps {' -> '.join(row['steps'])}")
            else:
                click.echo(f"bad {row['error']}", err=True)
    if not all(row["ok"] for row in rows):
        sys.exit(EXIT_USAGE)

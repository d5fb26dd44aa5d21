"""The `zmqllm` command line: one click group, verbs for subcommands.

Exit codes (docs/cli.md): 0 done, 1 the task or command failed, 2 usage or
config error, 3 mesh unreachable, 130 interrupted. Client commands talk to
daemons only through `zmqllm.client`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from zmqllm import __version__, keys, paths
from zmqllm.client import DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT_S, AsyncClient, MeshUnreachable, RequestFailed
from zmqllm.config import BUNDLED_MODEL, KEYS, ConfigError, load_config

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130

log = logging.getLogger("zmqllm.daemon")


class CliError(click.ClickException):
    """One clear line on stderr and a CONTRACT exit code; never a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="zmqllm")
@click.option("--mesh-key", metavar="FILE", envvar=keys.ENV_VAR, default=None,
              help=f"the mesh's key file (zmqllm keys new): every command and daemon started from here uses it "
                   f"[env: {keys.ENV_VAR}]")
@click.pass_context
def main(ctx: click.Context, mesh_key: str | None) -> None:
    """zmqllm: a brokerless peer-to-peer mesh of LLM daemons.

    \b
    Start a daemon on each machine, then drive the mesh from any of them:
      zmqllm keys new ~/.config/zmqllm/mesh.key     (once; copy it to each machine)
      export ZMQLLM_MESH_KEY=~/.config/zmqllm/mesh.key
      zmqllm daemon --name a --bind tcp://0.0.0.0:5555
      zmqllm daemon --name b --bind tcp://0.0.0.0:5555 --peer tcp://hostA:5555
      zmqllm peers --connect tcp://hostA:5555
      zmqllm submit "Once upon a time" --max-tokens 32
    Or start a local mesh in one go: zmqllm up --nodes 3
    """
    if not mesh_key:
        return
    if ctx.invoked_subcommand not in ("keys", "daemon"):  # `keys new` creates it; a daemon's config checks it
        try:
            keys.load(mesh_key)
        except keys.KeyFileError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    os.environ[keys.ENV_VAR] = mesh_key  # for the client and for daemons `up` starts


# -- daemon ---------------------------------------------------------------------------

def _config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per config key (docs come from config.KEYS, so they never drift)."""
    for key in reversed(list(KEYS.values())):
        help_text = f"{key.help} [env: {key.env_var}]"
        if key.name == "peers":
            option = click.option("--peer", "peers", multiple=True, metavar="ENDPOINT", help=help_text + " (repeatable)")
        elif key.name == "json_logs":
            option = click.option("--json", "json_logs", is_flag=True, default=None, help=help_text)
        elif key.type is bool:
            option = click.option(f"{key.flag}/--no-{key.flag[2:]}", key.name, default=None, help=help_text)
        else:
            kind: Any = {int: int, float: float}.get(key.type, click.Choice(key.choices) if key.choices else str)
            option = click.option(key.flag, key.name, type=kind, default=None, help=help_text)
        command = option(command)
    return command


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, envvar="ZMQLLM_CONFIG",
              help="TOML config file (flat keys, as the flags) [env: ZMQLLM_CONFIG]")
@_config_options
def daemon(config_path: str | None, **flags: Any) -> None:
    """Run one mesh daemon in the foreground (logs on stderr).

    Settings come from flags > ZMQLLM_<KEY> environment > --config file > defaults.

    \b
    Examples:
      zmqllm daemon --config configs/mesh/node-a.toml
      zmqllm daemon --name b --bind tcp://0.0.0.0:5556 --peer tcp://hostA:5555
      zmqllm daemon --name c --bind tcp://127.0.0.1:0 --peer tcp://127.0.0.1:5555 --engine echo
    """
    if not flags.get("peers"):
        flags["peers"] = None
    try:
        config = load_config(config_path, overrides=flags)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    from zmqllm import logs
    from zmqllm.daemon import DaemonError, serve
    from zmqllm.launcher import bind_to_parent

    bind_to_parent()
    logs.configure(config.log_level, config.json_logs)
    try:
        asyncio.run(serve(config))
    except DaemonError as exc:
        raise CliError(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


# -- client commands ------------------------------------------------------------------

def _client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--json", "as_json", is_flag=True, help="machine-readable output (JSON; JSON Lines for streams)")(command)
    command = click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT_S, show_default=True,
                           envvar="ZMQLLM_TIMEOUT", help="seconds to wait for the node [env: ZMQLLM_TIMEOUT]")(command)
    command = click.option("--connect", metavar="ENDPOINT", default=paths.default_connect,
                           envvar="ZMQLLM_CONNECT", show_default="$ZMQLLM_CONNECT, the last `zmqllm up`, or "
                           + paths.DEFAULT_CONNECT,
                           help="any node of the mesh [env: ZMQLLM_CONNECT]")(command)
    return command


def _query(connect: str, timeout: float, call: Callable[[AsyncClient], Any]) -> Any:
    async def run() -> Any:
        async with AsyncClient(connect, timeout) as client:
            return await call(client)

    try:
        return asyncio.run(run())
    except MeshUnreachable as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    except RequestFailed as exc:
        raise CliError(str(exc)) from None


def _show(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """A listing: one JSON document, or the human table."""
    click.echo(json.dumps(data, indent=2) if as_json else render(data))


@main.command()
@_client_options
def peers(connect: str, timeout: float, as_json: bool) -> None:
    """List every node of the mesh: name, state, endpoint, models, load.

    \b
    Example:
      zmqllm peers --connect tcp://hostA:5555 --json
    """
    from zmqllm.render import peer_table

    _show(_query(connect, timeout, lambda c: c.peers()), as_json, peer_table)


@main.command()
@_client_options
def status(connect: str, timeout: float, as_json: bool) -> None:
    """Show the answering node: id, uptime, tasks, protocol version."""
    from zmqllm.render import status_lines

    _show(_query(connect, timeout, lambda c: c.status()), as_json, status_lines)


@main.command()
@_client_options
def tasks(connect: str, timeout: float, as_json: bool) -> None:
    """List the tasks the answering node accepted (newest first), from its journal.

    \b
    Example:
      zmqllm tasks --json
    """
    from zmqllm.render import task_table

    _show(list((_query(connect, timeout, lambda c: c.request("GET_TASKS")))["tasks"]), as_json, task_table)


@main.command()
@click.argument("task_id")
@_client_options
def result(task_id: str, connect: str, timeout: float, as_json: bool) -> None:
    """Print one task's result (text, or how it ended) from the node that accepted it."""

    async def call(client: AsyncClient) -> dict[str, Any]:
        return dict((await client.request("GET_RESULT", task_id=task_id))["task"])

    found = _query(connect, timeout, call)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    elif "error" in found:
        raise CliError(f"task {task_id} {found['state']}: {found['error']['code']}: {found['error']['message']}")
    else:
        click.echo(found.get("text", ""))


@main.command()
@click.argument("task_id")
@_client_options
def cancel(task_id: str, connect: str, timeout: float, as_json: bool) -> None:
    """Cancel a running task through the node that accepted it."""

    async def call(client: AsyncClient) -> dict[str, Any]:
        reply = await client.request("CANCEL", task_id=task_id)
        return {"type": reply.type.lower(), **reply.fields}

    result = _query(connect, timeout, call)
    click.echo(json.dumps(result) if as_json else f"{task_id}: {result.get('finish_reason', result['type'])}")


def read_prompt(prompt: str) -> str:
    """A literal prompt, `@file`, or `-` for stdin."""
    if prompt == "-":
        return sys.stdin.read()
    if prompt.startswith("@"):
        try:
            return Path(prompt[1:]).read_text()
        except OSError as exc:
            raise CliError(f"cannot read prompt file {prompt[1:]!r}: {exc.strerror}", EXIT_USAGE) from None
    return prompt


def _task_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `submit` and `chat`: placement, sampling, ids."""
    options = [
        click.option("--model", help="model name, exactly as `zmqllm models` lists it (default: the only one)"),
        click.option("--peer", help="run on this node (by name)"),
        click.option("--max-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_TOKENS, show_default=True),
        click.option("--temperature", type=float, help="0 = greedy"),
        click.option("--top-p", type=float),
        click.option("--top-k", type=int),
        click.option("--min-p", type=float),
        click.option("--repeat-penalty", type=float),
        click.option("--seed", type=int, help="same seed and parameters: same output"),
        click.option("--stop", multiple=True, help="stop sequence (repeatable)"),
        click.option("--task-id", help="your own task id; resending it never runs the task twice"),
        click.option("--no-failover", is_flag=True,
                     help="end with an error if the executing node dies, instead of resuming on another"),
        click.option("--deadline", "deadline_s", type=click.FloatRange(min=0.001), metavar="SECONDS",
                     help="cancel the task and end it with a `deadline` error after this long"),
    ]
    for option in reversed(options):
        command = option(command)
    return _client_options(command)


def _run_task(connect: str, timeout: float, as_json: bool, prompt: str, messages: list[dict[str, str]] | None,
              sampling: dict[str, Any], **submit: Any) -> None:
    from zmqllm.streaming import stream_task

    params = {k: v for k, v in sampling.items() if v is not None}
    try:
        code = asyncio.run(stream_task(connect, timeout, as_json, prompt, messages=messages, params=params,
                                       **submit))
    except MeshUnreachable as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    sys.exit(code)


@main.command()
@click.argument("prompt")
@_task_options
def submit(prompt: str, model: str | None, peer: str | None, max_tokens: int, stop: tuple[str, ...],
           task_id: str | None, no_failover: bool, deadline_s: float | None, connect: str, timeout: float,
           as_json: bool, **sampling: Any) -> None:
    """Run a completion on the mesh and stream its tokens to stdout.

    PROMPT is the text itself, @FILE, or - for stdin. Ctrl-C cancels the task.

    \b
    Examples:
      zmqllm submit "The capital of France is" --max-tokens 32 --temperature 0
      zmqllm submit @prompt.txt --peer c --json
    """
    _run_task(connect, timeout, as_json, read_prompt(prompt), None, sampling, model=model, peer=peer,
              max_tokens=max_tokens, stop=stop, task_id=task_id, failover=not no_failover, deadline_s=deadline_s)


@main.command()
@click.argument("message")
@click.option("--system", help="a system message before yours")
@_task_options
def chat(message: str, system: str | None, model: str | None, peer: str | None, max_tokens: int,
         stop: tuple[str, ...], task_id: str | None, no_failover: bool, deadline_s: float | None, connect: str,
         timeout: float, as_json: bool, **sampling: Any) -> None:
    """Chat: send MESSAGE (text, @FILE or -) as the user and stream the reply.

    The serving node renders it with the model's chat template (or the
    configured --chat-format; the bundled model uses the simple "plain" one).

    \b
    Example:
      zmqllm chat "Explain heartbeats in one sentence" --max-tokens 48
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": read_prompt(message)}]
    _run_task(connect, timeout, as_json, "", messages, sampling, model=model, peer=peer, max_tokens=max_tokens,
              stop=stop, task_id=task_id, failover=not no_failover, deadline_s=deadline_s)


@main.command()
@_client_options
def models(connect: str, timeout: float, as_json: bool) -> None:
    """List every model in the mesh: which nodes serve it, context, slots, chat."""
    from zmqllm.render import model_rows, model_table

    _show(model_rows(_query(connect, timeout, lambda c: c.peers())), as_json, model_table)


@main.command()
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


@main.command()
@click.option("--nodes", type=click.IntRange(1, 16), default=None,
              help="daemons to start [default: 3, or one per core for llama when fewer]")
@click.option("--engine", type=click.Choice(["echo", "llama"]), default="llama", show_default=True)
@click.option("--model", default=BUNDLED_MODEL, show_default=True,
              help="llama model: a GGUF path or bundled:gemma3-270m")
@click.option("--echo-rate", type=float, default=50.0, show_default=True, help="echo tokens/s")
@click.option("--heartbeat-interval", type=float, default=0.5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one per node, then ready (implies --no-dash)")
@click.option("--no-dash", is_flag=True, help="keep the mesh up without opening the dashboard")
def up(nodes: int | None, engine: str, model: str, echo_rate: float, heartbeat_interval: float,
       as_json: bool, no_dash: bool) -> None:
    """Start a local mesh of daemons (free ports) and keep it up until Ctrl-C.

    By default it serves the bundled model gemma3-270m (a small base model:
    plain completion) and opens the dashboard on it; quitting the dashboard
    (q) or Ctrl-C stops every daemon. The endpoints are recorded, so
    `zmqllm peers` and `zmqllm submit` find the mesh without --connect. Daemon
    logs go to the state dir (shown at start).

    \b
    Examples:
      zmqllm up
      zmqllm up --nodes 3 --engine echo
      zmqllm up --model /models/qwen2.5-1.5b-instruct-q4_k_m.gguf --nodes 1
    """
    from zmqllm.launcher import LaunchError, default_nodes, run_mesh

    try:
        sys.exit(run_mesh(nodes=nodes or default_nodes(engine), engine=engine, model=model, echo_rate=echo_rate,
                          heartbeat_interval=heartbeat_interval, as_json=as_json,
                          dashboard=not (no_dash or as_json) and sys.stdout.isatty()))
    except LaunchError as exc:
        raise CliError(str(exc)) from None


@main.command()
@click.argument("what", type=click.Choice(["messaging", "overhead", "failover", "dash", "workflow", "concurrency"]))
@click.option("--tokens", type=click.IntRange(min=2), default=None,
              help="tokens per run [default: 20000 messaging, 128 overhead]")
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="runs to take the median of [default: 5; concurrency, workflow 3; failover 10, at least]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="llama threads, raw and mesh alike [default: cores - 1, leaving one for the relay processes]")
@click.option("--llama-server", type=click.Path(exists=True, dir_okay=False), default=None,
              help="concurrency: llama.cpp's llama-server binary, the baseline [default: built once from the "
                   "installed llama-cpp-python's sources and cached]")
@click.option("--gpu-layers", type=int, default=0, show_default=True,
              help="concurrency: layers offloaded to the GPU, zmqllm and llama-server alike (-1 = all)")
@click.option("--no-build", is_flag=True,
              help="concurrency: never build llama-server; without one, compare with slots = 1")
@click.option("--json", "as_json", is_flag=True)
def bench(what: str, tokens: int | None, runs: int | None, threads: int | None, llama_server: str | None,
          gpu_layers: int, no_build: bool, as_json: bool) -> None:
    """Measure the mesh against a raw baseline in the same run; prints ratios.

    \b
    messaging: tokens/s from an echo engine on node B through origin A to a
               client, against raw pyzmq+msgpack doing the same two hops.
    overhead:  one greedy llama stream on the bundled model through A -> B,
               against llama-cpp-python streaming directly (same threads):
               decode tok/s ratio and time to first token added.
    failover:  SIGKILL the executing node mid-stream; time until the next
               token reaches the client, at heartbeat 0.5 s and 0.1 s.
    concurrency: 4 and 8 concurrent greedy streams through a llama daemon with
               slots = 4 / 8 (continuous batching), against llama-server
               -np 4 / 8: --llama-server PATH, else one built from the
               installed llama-cpp-python's sources on first use (needs
               cmake and a C++ compiler; several minutes, then cached),
               else (--no-build) the same daemon with slots = 1.
    workflow:  the map-reduce example workflow on 3 nodes / on 1 node, wall
               time, echo engine at a fixed rate and the bundled model.
    dash:      events/s the dashboard ingests while keeping its repaint rate,
               key-to-screen latency p50/p95, and a daemon's tok/s with vs
               without a dashboard attached.
    """

    from zmqllm import bench as benchmarks

    try:
        if what == "messaging":
            report = benchmarks.run_messaging(tokens=tokens or 20_000, runs=runs or 5)
        elif what == "failover":
            report = benchmarks.run_failover(runs=max(runs or 10, 10))
        elif what == "concurrency":
            from zmqllm import concurrency_bench

            report = concurrency_bench.run_concurrency(runs=runs or 3, threads=threads or 2,
                                                       llama_server=llama_server, build=not no_build,
                                                       gpu_layers=gpu_layers,
                                                       progress=lambda line: click.echo(f"bench: {line}", err=True))
        elif what == "workflow":
            from zmqllm import workflow_bench

            report = workflow_bench.run_workflow(runs=runs or 3, threads=threads or 1)
        elif what == "dash":
            from zmqllm import dashbench

            report = dashbench.run_dash(runs=runs or 5)
        else:
            report = benchmarks.run_overhead(tokens=tokens or 128, runs=runs or 5,
                                             threads=threads or max(1, (os.cpu_count() or 2) - 1))
    except KeyboardInterrupt:  # what it started is stopped on the way out
        click.echo("bench: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(json.dumps(report, indent=2) if as_json else report["summary"])


from zmqllm import cli_keys, cli_workflows  # noqa: E402,F401  (register keys, run, runs, workflows on `main`)

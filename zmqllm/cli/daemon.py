"""`zmqllm daemon` (one daemon in the foreground) and `zmqllm up` (a local mesh of them)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
from click.core import ParameterSource

from zmqllm.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, CliError, config_options, unset_empty_lists
from zmqllm.node.config import BUNDLED_MODEL, ConfigError, check_model, http_address, load_config


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, envvar="ZMQLLM_CONFIG",
              help="TOML config file (flat keys, as the flags) [env: ZMQLLM_CONFIG]")
@config_options
def daemon(config_path: str | None, **flags: Any) -> None:
    """Run one mesh daemon in the foreground (logs on stderr).

    Settings come from flags > ZMQLLM_<KEY> environment > --config file > defaults.

    \b
    Examples:
      zmqllm daemon --config configs/mesh/node-a.toml
      zmqllm daemon --name b --bind tcp://0.0.0.0:5556 --peer tcp://hostA:5555
      zmqllm daemon --name c --bind tcp://127.0.0.1:0 --peer tcp://127.0.0.1:5555 --engine echo
      zmqllm daemon --model bundled:gemma3-270m --http 127.0.0.1:8080
      zmqllm daemon --http 0.0.0.0:8080 --api-key "$(cat ~/.config/zmqllm/http.key)"
    """
    flags = unset_empty_lists(flags)
    try:
        config = load_config(config_path, overrides=flags)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    from zmqllm.node import logs
    from zmqllm.node.daemon import DaemonError, serve
    from zmqllm.cli.launcher import bind_to_parent

    bind_to_parent()
    logs.configure(config.log_level, config.json_logs)
    try:
        asyncio.run(serve(config))
    except DaemonError as exc:
        raise CliError(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


UP_HTTP = "127.0.0.1:8080"
"""Where `up` serves HTTP by default: llama-server's port, which many tools are set up for."""


@click.command()
@click.option("--nodes", type=click.IntRange(1, 16), default=None,
              help="daemons to start [default: 3, or one per core for llama when fewer]")
@click.option("--engine", type=click.Choice(["echo", "llama"]), default="llama", show_default=True)
@click.option("--model", default=BUNDLED_MODEL, show_default=True,
              help="llama model: a GGUF path or bundled:gemma3-270m")
@click.option("--echo-rate", type=float, default=50.0, show_default=True, help="echo tokens/s")
@click.option("--heartbeat-interval", type=float, default=0.5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one per node, then ready (implies --no-dash)")
@click.option("--no-dash", is_flag=True, help="keep the mesh up without opening the dashboard")
@click.option("--http", "http", default=UP_HTTP, show_default=True, metavar="HOST:PORT",
              help="the first node's HTTP gateway (OpenAI, Anthropic, Ollama APIs, /metrics); the default port "
                   "when taken falls back to a free one, port 0 always picks one")
@click.option("--no-http", is_flag=True, help="serve no HTTP gateway")
def up(nodes: int | None, engine: str, model: str, echo_rate: float, heartbeat_interval: float,
       as_json: bool, no_dash: bool, http: str, no_http: bool) -> None:
    """Start a local mesh of daemons (free ports) and keep it up until Ctrl-C.

    By default it serves the bundled model gemma3-270m (a small base model:
    plain completion) and opens the dashboard on it; quitting the dashboard
    (q) or Ctrl-C stops every daemon. The first node serves the HTTP gateway
    (127.0.0.1:8080 unless taken: the URL is printed). The endpoints are recorded, so
    `zmqllm peers` and `zmqllm submit` find the mesh without --connect. Daemon
    logs go to the state dir (shown at start). Without a terminal it runs
    headless (and says so). One `up` runs at a time per ZMQLLM_HOME: a second
    one refuses, naming the running mesh.

    \b
    Examples:
      zmqllm up
      zmqllm up --nodes 3 --engine echo
      zmqllm up --http 127.0.0.1:11434        # where Ollama's clients look
      zmqllm up --model /models/qwen2.5-1.5b-instruct-q4_k_m.gguf --nodes 1
    """
    from zmqllm.cli.invocation import command_name
    from zmqllm.cli.launcher import LaunchError, default_nodes, run_mesh

    if engine == "llama":
        source = click.get_current_context().get_parameter_source("model")
        try:
            check_model(model, "flag --model" if source is ParameterSource.COMMANDLINE else "default")
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    gateway = None if no_http else _up_http(http, click.get_current_context().get_parameter_source("http"))
    dashboard = not (no_dash or as_json)
    headless = dashboard and not sys.stdout.isatty()

    def say_headless() -> None:  # once this `up` is sure to run (a second one is refused first)
        click.echo(f"no terminal: running headless; open the dashboard in one with `{command_name()} dash`",
                   err=True)

    try:
        sys.exit(run_mesh(nodes=nodes or default_nodes(engine), engine=engine, model=model, echo_rate=echo_rate,
                          heartbeat_interval=heartbeat_interval, as_json=as_json, dashboard=dashboard and not headless,
                          on_start=say_headless if headless else None, http=gateway))
    except LaunchError as exc:
        raise CliError(str(exc)) from None


def _up_http(address: str, source: ParameterSource | None) -> str:
    """The gateway address `up` gives its first node: as asked (a bad one is a usage error), except that the
    default port, when something else holds it, falls back to a free one rather than failing the mesh."""
    from zmqllm.cli.launcher import port_is_free

    parsed = http_address(address)
    if parsed is None:
        raise CliError(f"--http must be HOST:PORT, got {address!r}", EXIT_USAGE)
    if source is ParameterSource.COMMANDLINE or port_is_free(*parsed):
        return address
    return f"{parsed[0]}:0"


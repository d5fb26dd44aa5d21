"""What every verb of the command line shares: exit codes, the one-line error, client and config options.

Exit codes (docs/cli.md): 0 done, 1 the task or command failed, 2 usage or
config error, 3 mesh unreachable, 130 interrupted. Client commands talk to
daemons only through `zmqllm.client`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from zmqllm.client import DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT_S, AsyncClient, MeshUnreachable, RequestFailed
from zmqllm.core.generation import SAMPLING_KEYS, SAMPLING_RANGES
from zmqllm.node import paths
from zmqllm.node.config import KEYS

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130

log = logging.getLogger("zmqllm.daemon")


class CliError(click.ClickException):
    """One clear line on stderr and a CONTRACT exit code; never a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def config_options(command: Callable[..., Any], json_logs_flag: str = "--json") -> Callable[..., Any]:
    """One flag per config key (docs come from config.KEYS, so they never drift). `zmqllm info` names the
    json_logs flag `--json-logs`, as its own `--json` is its output format."""
    for key in reversed(list(KEYS.values())):
        help_text = f"{key.help} [env: {key.env_var}]"
        if key.name == "peers":
            option = click.option("--peer", "peers", multiple=True, metavar="ENDPOINT", help=help_text + " (repeatable)")
        elif key.type is tuple:
            option = click.option(key.flag, key.name, multiple=True, metavar=key.metavar,
                                  help=help_text + " (repeatable)")
        elif key.name == "json_logs":
            option = click.option(json_logs_flag, "json_logs", is_flag=True, default=None, help=help_text)
        elif key.type is bool:
            option = click.option(f"{key.flag}/--no-{key.flag[2:]}", key.name, default=None, help=help_text)
        else:
            kind: Any = {int: int, float: float}.get(key.type, click.Choice(key.choices) if key.choices else str)
            option = click.option(key.flag, key.name, type=kind, default=None, help=help_text)
        command = option(command)
    return command


def unset_empty_lists(flags: dict[str, Any]) -> dict[str, Any]:
    """A repeatable flag not given comes as (); None says "not given", so the environment or file decide."""
    return {name: None if KEYS[name].type is tuple and not value else value
            for name, value in flags.items()}


def client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--json", "as_json", is_flag=True, help="machine-readable output (JSON; JSON Lines for streams)")(command)
    command = click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT_S, show_default=True,
                           envvar="ZMQLLM_TIMEOUT", help="seconds to wait for the node [env: ZMQLLM_TIMEOUT]")(command)
    command = click.option("--connect", metavar="ENDPOINT", default=paths.default_connect,
                           envvar="ZMQLLM_CONNECT", show_default="$ZMQLLM_CONNECT, the last `zmqllm up`, or "
                           + paths.DEFAULT_CONNECT,
                           help="any node of the mesh [env: ZMQLLM_CONNECT]")(command)
    return command


def query(connect: str, timeout: float, call: Callable[[AsyncClient], Any]) -> Any:
    async def run() -> Any:
        async with AsyncClient(connect, timeout) as client:
            return await call(client)

    try:
        return asyncio.run(run())
    except MeshUnreachable as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    except RequestFailed as exc:
        raise CliError(str(exc)) from None


def show(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """A listing: one JSON document, or the human table."""
    click.echo(json.dumps(data, indent=2) if as_json else render(data))


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


def _sampling_range(key: str) -> click.ParamType:
    """The engines' own range for a sampling parameter (`SAMPLING_RANGES`), as a click type: out of range is a
    usage error here, not a failed task later."""
    allowed = SAMPLING_RANGES[key]
    if SAMPLING_KEYS[key] is int:
        return click.IntRange(min=int(allowed.low), max=None if allowed.high is None else int(allowed.high),
                              min_open=allowed.low_open)
    return click.FloatRange(min=allowed.low, max=allowed.high, min_open=allowed.low_open)


def task_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `submit` and `chat`: placement, sampling, ids."""
    options = [
        click.option("--model", help="model name, exactly as `zmqllm models` lists it (default: the only one)"),
        click.option("--peer", help="run on this node (by name)"),
        click.option("--max-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_TOKENS, show_default=True),
        click.option("--temperature", type=_sampling_range("temperature"), help="0 = greedy"),
        click.option("--top-p", type=_sampling_range("top_p")),
        click.option("--top-k", type=_sampling_range("top_k"), help="0 = no limit"),
        click.option("--min-p", type=_sampling_range("min_p")),
        click.option("--repeat-penalty", type=_sampling_range("repeat_penalty")),
        click.option("--seed", type=int, help="same seed and parameters: same output"),
        click.option("--stop", multiple=True, help="stop sequence (repeatable)"),
        click.option("--task-id", help="your own task id; resending it never runs the task twice"),
        click.option("--no-failover", is_flag=True,
                     help="end with an error if the executing node dies, instead of resuming on another"),
        click.option("--deadline", "deadline_s", type=click.FloatRange(min=0.001), metavar="SECONDS",
                     help="cancel the task and end it with a `deadline` error after this long"),
        click.option("--detach", is_flag=True,
                     help="print the task id once accepted and exit; the task runs on (surviving its node) and "
                          "`zmqllm result ID` through any node gives its end"),
    ]
    for option in reversed(options):
        command = option(command)
    return client_options(command)


def run_task(connect: str, timeout: float, as_json: bool, prompt: str, messages: list[dict[str, str]] | None,
              sampling: dict[str, Any], **submit: Any) -> None:
    from zmqllm.cli.stream_task import stream_task

    params = {k: v for k, v in sampling.items() if v is not None}
    try:
        code = asyncio.run(stream_task(connect, timeout, as_json, prompt, messages=messages, params=params,
                                       **submit))
    except MeshUnreachable as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    sys.exit(code)

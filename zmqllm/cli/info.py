"""`zmqllm info`: every path zmqllm uses here and every daemon setting, each with where it came from.

A daemon's settings come from four layers (flag > environment > file > default);
when one is not what the user expects, this says which layer set it, without
starting anything. It takes the same flags as `zmqllm daemon`, so
`zmqllm info --config F --name a` shows exactly what that daemon would run with.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from zmqllm import __version__
from zmqllm.cli.common import EXIT_USAGE, CliError, config_options, unset_empty_lists
from zmqllm.node.journal import JOURNAL_FILE
from zmqllm.node import paths
from zmqllm.node.config import ConfigError, NodeConfig, data_dir_for, resolve_config

"""The node's journal inside its data dir (`zmqllm.node.node` opens it there)."""


def _layer(source: str) -> str:
    """`flag --x`, `environment ZMQLLM_X` and `default` as they are; a bare path is the config file."""
    return source if source.split(" ", 1)[0] in ("flag", "environment", "default") else f"file {source}"


def _base_source(xdg_key: str) -> str:
    """Where a path's base came from (`zmqllm.node.paths`: ZMQLLM_HOME, else the XDG variable, else ~)."""
    for variable in ("ZMQLLM_HOME", xdg_key):
        if os.environ.get(variable):
            return f"environment {variable}"
    return "default"


def describe(config: NodeConfig, sources: dict[str, str], config_path: str | None,
             config_source: str) -> dict[str, Any]:
    """The `info` document: version, paths and settings, each with its value and where it came from."""
    data_dir = data_dir_for(config)
    data_source = _layer(sources["data_dir"]) if config.data_dir else _base_source("XDG_DATA_HOME")
    state = paths.state_file()
    connect_source = ("environment ZMQLLM_CONNECT" if os.environ.get("ZMQLLM_CONNECT")
                      else f"state file {state}" if paths.read_state() else "default")
    return {
        "version": __version__,
        "python": sys.executable,
        "paths": {
            "config": {"path": config_path, "source": config_source},
            "data": {"path": str(data_dir), "source": data_source},
            "journal": {"path": str(data_dir / JOURNAL_FILE), "source": data_source},
            "mesh_key": {"path": config.mesh_key, "source": _layer(sources["mesh_key"])},
            "cache": {"path": str(paths.cache_dir()), "source": _base_source("XDG_CACHE_HOME")},
            "logs": {"path": str(state.parent / "logs"), "source": _base_source("XDG_STATE_HOME")},
            "state_file": {"path": str(state), "source": _base_source("XDG_STATE_HOME")},
        },
        "connect": {"endpoint": paths.default_connect(), "source": connect_source},
        "settings": {name: {"value": _shown(name, value), "source": _layer(sources[name])}
                     for name, value in ((n, getattr(config, n)) for n in sources)},
    }


def _shown(name: str, value: Any) -> Any:
    """A setting as `info` prints it: lists as lists; a secret (the HTTP API keys) only as whether it is set."""
    if name == "api_key" and value is not None:
        return f"set ({len(value.split(','))} key(s), hidden)"
    return list(value) if isinstance(value, tuple) else value


def _text(doc: dict[str, Any]) -> str:
    rows = [f"zmqllm {doc['version']} ({doc['python']})", "", "paths:"]
    rows += [f"  {name:<11} {entry['path'] or '-'}  ({entry['source']})" for name, entry in doc["paths"].items()]
    rows += ["  (a daemon logs to stderr, so to journald under systemd; logs/ holds those `zmqllm up` started)"]
    rows += ["", f"client commands connect to {doc['connect']['endpoint']} ({doc['connect']['source']})", "",
             "daemon settings (flag > environment > file > default):"]
    width = max(len(name) for name in doc["settings"])
    for name, entry in doc["settings"].items():
        value = entry["value"]
        shown = ", ".join(value) if isinstance(value, list) else str(value)
        shown = "-" if value is None or not shown else shown
        rows.append(f"  {name:<{width}} {shown:<28} {entry['source']}")
    return "\n".join(rows)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, envvar="ZMQLLM_CONFIG",
              help="TOML config file, as `zmqllm daemon` takes it [env: ZMQLLM_CONFIG]")
@click.option("--json", "as_json", is_flag=True, help="one JSON document")
@functools.partial(config_options, json_logs_flag="--json-logs")
def info(config_path: str | None, as_json: bool, **flags: Any) -> None:
    """Show every path (config, data, journal, cache, logs, state file) and every daemon setting with
    where it came from: flag, environment, file or default. Takes `zmqllm daemon`'s flags.

    \b
    Examples:
      zmqllm info
      zmqllm info --config /etc/zmqllm/daemon.toml --json
    """
    flags = unset_empty_lists(flags)
    try:
        config, sources = resolve_config(config_path, overrides=flags)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    source = click.get_current_context().get_parameter_source("config_path")
    config_source = ("none given (--config or ZMQLLM_CONFIG)" if config_path is None else
                     "environment ZMQLLM_CONFIG" if source is click.core.ParameterSource.ENVIRONMENT
                     else "flag --config")
    doc = describe(config, sources, str(Path(config_path).resolve()) if config_path else None, config_source)
    click.echo(json.dumps(doc, indent=2) if as_json else _text(doc))

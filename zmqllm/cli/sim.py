"""`zmqllm sim`: the pure protocols on a simulated clock and network, at sizes one machine's processes cannot reach."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from zmqllm.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, CliError

MAX_SIM_NODES = 8192
"""The most members one SWIM table holds (`SwimConfig.max_members`)."""


class _Number(click.ParamType):
    """A number within bounds; anything else is one line naming the option and what it takes (exit 2), rather
    than click's usage block."""

    def __init__(self, kind: type, low: float, high: float, what: str) -> None:
        self.kind, self.low, self.high, self.what = kind, low, high, what
        self.name = kind.__name__

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        option = param.opts[0] if param is not None and param.opts else "value"
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            raise CliError(f"{option} takes {self.what}, got {value!r}", EXIT_USAGE) from None
        if isinstance(number, float) and not math.isfinite(number) or not self.low <= number <= self.high:
            raise CliError(f"{option} takes {self.what}, got {value!r}", EXIT_USAGE)
        return number


@click.group()
def sim() -> None:
    """Simulate the mesh's pure protocols on a simulated clock and network.

    \b
    Each node runs the real protocol code; only time and the network are
    simulated (loss, delay, partitions, crashes), so 1,000 nodes run in
    about a minute here and a seed repeats a run exactly.
    """


@sim.command()
@click.option("--nodes", type=_Number(int, 2, MAX_SIM_NODES, f"a whole number of nodes, 2 to {MAX_SIM_NODES}"),
              default=100, show_default=True, envvar="ZMQLLM_SIM_NODES", show_envvar=True,
              help="members of the simulated mesh")
@click.option("--loss", type=_Number(float, 0.0, 0.5, "a probability from 0 to 0.5 (0.02 is 2 %)"), default=0.0,
              show_default=True, envvar="ZMQLLM_SIM_LOSS", show_envvar=True,
              help="chance that any one message is lost")
@click.option("--seed", type=_Number(int, 0, 2**63 - 1, "a whole number, 0 or more"), default=1,
              show_default=True, envvar="ZMQLLM_SIM_SEED", show_envvar=True,
              help="the same seed gives the same run")
@click.option("--node-days", type=_Number(float, 0.001, 1000.0, "a number of node-days from 0.001 to 1000"),
              default=1.0, show_default=True, envvar="ZMQLLM_SIM_NODE_DAYS", show_envvar=True,
              help="fault-free exposure over which false deaths are counted (at least 60 simulated seconds)")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout instead of the summary")
def membership(nodes: int, loss: float, seed: int, node_days: float, as_json: bool) -> None:
    """SWIM membership (probes, suspicion, gossip, partial views) against today's all-to-all heartbeat.

    \b
    One run: a fault-free stretch (false deaths, messages and bytes per node
    per second), three crashes each followed by a join (time until each live
    node, then all, judge the crash dead; time until the whole mesh lists the
    newcomer), and a partition of 10 % of the nodes (at most 20) for 20 s,
    then healed (time until every node is right about every other again).
    The all-to-all heartbeat (0.5 s beats, dead after 4 missed) is modelled
    at the same size, loss and duration. Progress goes to stderr; the
    figures to stdout, with whether each goal (docs/membership.md) is met.

    \b
    Examples:
      zmqllm sim membership --nodes 1000 --loss 0.02
      zmqllm sim membership --nodes 10 --json | jq .figures.detect_median_s
    """
    from zmqllm.sim.membership import SimSettings, run_membership, summary

    try:
        settings = SimSettings(nodes=nodes, loss=loss, seed=seed, node_days=node_days)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    try:
        report = run_membership(settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        raise CliError("interrupted", EXIT_INTERRUPTED) from None
    click.echo(json.dumps(report, indent=2) if as_json else summary(report))

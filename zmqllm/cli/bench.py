"""`zmqllm bench`: the benchmarks, each against a raw baseline measured in the same run."""

from __future__ import annotations

import json
import os
import sys

import click

from zmqllm.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError

@click.command()
@click.argument("what", type=click.Choice(["messaging", "overhead", "failover", "dash", "workflow", "concurrency",
                                                 "http", "chaos"]))
@click.option("--tokens", type=click.IntRange(min=2), default=None,
              help="tokens per run [default: 20000 messaging, 128 overhead and http (32 with --quick)]")
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="runs to take the median of [default: 5; concurrency, workflow 3; failover 10, at least; "
                   "http 6 (--quick 3), a multiple of its 3 sides]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="llama threads, raw and mesh alike [default: cores - 1, leaving one for the relay processes]")
@click.option("--llama-server", type=click.Path(exists=True, dir_okay=False), default=None,
              help="concurrency, http: llama.cpp's llama-server binary, the baseline [default: built once from the "
                   "installed llama-cpp-python's sources and cached]")
@click.option("--gpu-layers", type=int, default=0, show_default=True,
              help="concurrency: layers offloaded to the GPU, zmqllm and llama-server alike (-1 = all)")
@click.option("--no-build", is_flag=True,
              help="concurrency, http: never build llama-server; without one, concurrency compares with slots = 1 "
                   "and http skips its part (b)")
@click.option("--quick", is_flag=True, help="http: a short run (3 runs, 32 greedy tokens, 256-token echo streams)")
@click.option("--echo-only", is_flag=True, help="http: only part (c), the echo streams (no model, no llama-server)")
@click.option("--kill", type=click.Choice(["executor", "origin"]), default="executor", show_default=True,
              help="failover: the node SIGKILLed mid-stream: the one executing it, or the one the client submitted "
                   "to (the client must move by itself)")
@click.option("--nodes", type=click.IntRange(min=3), default=5, show_default=True, help="chaos: echo daemons")
@click.option("--duration", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="chaos: seconds of faults")
@click.option("--calm", type=click.FloatRange(min=1), default=None,
              help="chaos: seconds without faults first, the latency baseline [default: duration / 6, 5 to 20]")
@click.option("--seed", type=int, default=None, help="chaos: seed of the fault schedule [default: random, printed]")
@click.option("--clients", type=click.IntRange(min=1), default=4, show_default=True,
              help="chaos: concurrent clients, each submitting tasks one after another")
@click.option("--run-clients", type=click.IntRange(min=0), default=1, show_default=True,
              help="chaos: clients following two-step workflow runs, one after another")
@click.option("--fault-every", metavar="MIN-MAX", default="1-3", show_default=True,
              help="chaos: seconds between two faults, drawn in this range")
@click.option("--heartbeat", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="chaos: the daemons' --heartbeat-interval")
@click.option("--json", "as_json", is_flag=True)
def bench(what: str, tokens: int | None, runs: int | None, threads: int | None, llama_server: str | None,
          gpu_layers: int, no_build: bool, quick: bool, echo_only: bool, kill: str, nodes: int, duration: float,
          calm: float | None, seed: int | None, clients: int, run_clients: int, fault_every: str,
          heartbeat: float, as_json: bool) -> None:
    """Measure the mesh against a raw baseline in the same run; prints ratios.

    \b
    messaging: tokens/s from an echo engine on node B through origin A to a
               client, against raw pyzmq+msgpack doing the same two hops.
    overhead:  one greedy llama stream on the bundled model through A -> B,
               against llama-cpp-python streaming directly (same threads):
               decode tok/s ratio and time to first token added.
    failover:  SIGKILL the executing node mid-stream; time until the next
               token reaches the client, at heartbeat 0.5 s and 0.1 s.
               --kill origin: SIGKILL the node the client submitted to
               instead (the stream runs on another); the client moves to
               another node by itself: median and max until its next
               token (goal <= 0.5 s), every token once, in order.
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
    http:      the OpenAI gateway (POST /v1/completions, streamed): (a) one
               greedy stream of the bundled model, gateway vs the native
               client on the same daemon (tok/s ratio, TTFT added); (b) the
               same request to llama.cpp's llama-server (as concurrency finds
               or builds it); (c) 64 concurrent echo streams through one
               gateway vs the native client (aggregate tok/s). A part that
               cannot run is skipped with its reason (exit 1).
    chaos:     N echo daemons under concurrent clients; after a calm phase,
               one fault every --fault-every seconds (seeded: SIGKILL,
               SIGSTOP then SIGCONT, or restart of a killed node, any role,
               always 2 nodes left serving). Then every task is checked:
               no token lost, duplicated or reordered, the exact echo text,
               one ending each, no daemon process left; plus failovers by
               kind, daemon RSS, and latency under faults / calm (the ratio).
               Workflow runs go on meanwhile (--run-clients): each ends
               once with the echo's output, none is finished by two nodes.
               Exit 1 when an invariant is broken. Not yet: partitions.

    \b
    Examples:
      zmqllm bench http --quick
      zmqllm bench http --echo-only --json
      zmqllm bench failover --kill origin
      zmqllm bench chaos --duration 60 --seed 7 --json
    """

    from zmqllm.bench import mesh as benchmarks

    try:
        if what == "messaging":
            report = benchmarks.run_messaging(tokens=tokens or 20_000, runs=runs or 5)
        elif what == "failover":
            report = _run_failover(kill, runs)
        elif what == "chaos":
            report = _run_chaos(nodes, duration, calm, seed, clients, run_clients, fault_every, heartbeat)
        elif what == "concurrency":
            from zmqllm.bench import concurrency as concurrency_bench

            report = concurrency_bench.run_concurrency(runs=runs or 3, threads=threads or 2,
                                                       llama_server=llama_server, build=not no_build,
                                                       gpu_layers=gpu_layers,
                                                       progress=lambda line: click.echo(f"bench: {line}", err=True))
        elif what == "workflow":
            from zmqllm.bench import workflow as workflow_bench

            report = workflow_bench.run_workflow(runs=runs or 3, threads=threads or 1)
        elif what == "http":
            report = _run_http(runs, tokens, threads, llama_server, no_build, quick, echo_only)
        elif what == "dash":
            from zmqllm.bench import dash as dashbench

            report = dashbench.run_dash(runs=runs or 5)
        else:
            report = benchmarks.run_overhead(tokens=tokens or 128, runs=runs or 5,
                                             threads=threads or max(1, (os.cpu_count() or 2) - 1))
    except KeyboardInterrupt:  # what it started is stopped on the way out
        click.echo("bench: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(json.dumps(report, indent=2) if as_json else report["summary"])
    if report.get("failed"):
        reasons = "; ".join(f"{part}: {why}" for part, why in report["skipped"].items())
        click.echo(f"bench: {what}: a part could not run: {reasons}", err=True)
        sys.exit(EXIT_FAILED)
    if what == "chaos" and not report["met"]:
        click.echo(f"bench: chaos: invariants broken: {report['figures']['violations']} tasks, "
                   f"{report['figures']['runs'].get('violations', 0)} runs, "
                   f"{len(report['figures']['processes']['leaked'])} processes left", err=True)
        sys.exit(EXIT_FAILED)


def _run_failover(kill: str, runs: int | None) -> dict:
    """`bench failover`; one line and exit 1 when it cannot run (a stream that does not resume whole)."""
    from zmqllm.bench import mesh as benchmarks
    from zmqllm.client import MeshUnreachable

    try:
        if kill == "origin":
            return benchmarks.run_origin_failover(runs=max(runs or 10, 10))
        return benchmarks.run_failover(runs=max(runs or 10, 10))
    except (RuntimeError, MeshUnreachable, TimeoutError, OSError) as exc:
        raise CliError(f"bench failover --kill {kill} could not run: {exc or type(exc).__name__}") from None


def _run_chaos(nodes: int, duration: float, calm: float | None, seed: int | None, clients: int, run_clients: int,
               fault_every: str, heartbeat: float) -> dict:
    """`bench chaos`, its progress on stderr; one line and exit 1 when the mesh cannot start."""
    import random

    from zmqllm.bench import chaos
    from zmqllm.client import MeshUnreachable

    try:
        every = chaos.parse_interval(fault_every)
    except ValueError as exc:
        raise CliError(f"--fault-every: {exc}", exit_code=EXIT_USAGE) from None
    settings = chaos.ChaosSettings(nodes=nodes, duration_s=duration, seed=random.randrange(2**31) if seed is None
                                   else seed, clients=clients, run_clients=run_clients, fault_every=every,
                                   heartbeat_s=heartbeat,
                                   calm_s=calm if calm is not None else chaos.default_calm_s(duration))
    try:
        return chaos.run_chaos(settings, progress=lambda line: click.echo(f"bench: chaos: {line}", err=True))
    except (RuntimeError, MeshUnreachable, TimeoutError, OSError) as exc:
        raise CliError(f"bench chaos could not run: {exc or type(exc).__name__}") from None


def _run_http(runs: int | None, tokens: int | None, threads: int | None, llama_server: str | None,
              no_build: bool, quick: bool, echo_only: bool) -> dict:
    """`bench http`, its progress on stderr; one line and exit 1 when no part of it can run."""
    from zmqllm.bench import http as http_bench

    try:
        return http_bench.run_http(threads=threads or max(1, (os.cpu_count() or 2) - 1), runs=runs, tokens=tokens,
                                   quick=quick, echo_only=echo_only, llama_server_binary=llama_server,
                                   build=not no_build,
                                   progress=lambda line: click.echo(f"bench: http: {line}", err=True))
    except RuntimeError as exc:
        raise CliError(f"bench http could not run: {exc}") from None

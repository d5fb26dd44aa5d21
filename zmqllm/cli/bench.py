"""`zmqllm bench`: the benchmarks, each against a raw baseline measured in the same run."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from zmqllm.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError

BENCH_NAMES = ["messaging", "overhead", "failover", "dash", "workflow", "concurrency", "http", "chaos", "cache",
               "scale", "routing", "all"]


@click.command()
@click.argument("what", type=click.Choice(BENCH_NAMES))
@click.option("--tokens", type=click.IntRange(min=2), default=None,
              help="tokens per run [default: 20000 messaging, 128 overhead and http (32 with --quick), "
                   "100 per stream scale]")
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="runs to take the median of [default: 5; concurrency, workflow 3; failover 10, at least; "
                   "http 6 (--quick 3), a multiple of its 3 sides; scale 3, routing 2 (--quick 1)]")
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
@click.option("--quick", is_flag=True, help="http: a short run (3 runs, 32 greedy tokens, 256-token echo streams); "
                                            "scale, routing: one short run; all: every benchmark small (<= 3 min "
                                            "on 2 cores)")
@click.option("--echo-only", is_flag=True, help="http: only part (c), the echo streams (no model, no llama-server)")
@click.option("--kill", type=click.Choice(["executor", "origin"]), default="executor", show_default=True,
              help="failover: the node SIGKILLed mid-stream: the one executing it, or the one the client submitted "
                   "to (the client must move by itself)")
@click.option("--nodes", type=click.IntRange(min=3), default=5, show_default=True, help="chaos: echo daemons")
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="chaos: seconds of faults [default: 120]; routing: seconds of arrivals per policy [default: 30]")
@click.option("--calm", type=click.FloatRange(min=1), default=None,
              help="chaos: seconds without faults first, the latency baseline [default: duration / 6, 5 to 20]")
@click.option("--seed", type=int, default=None,
              help="chaos: seed of the fault schedule [default: random, printed]; routing: seed of the arrivals "
                   "[default: 20]")
@click.option("--clients", type=click.IntRange(min=1), default=4, show_default=True,
              help="chaos: concurrent clients, each submitting tasks one after another")
@click.option("--run-clients", type=click.IntRange(min=0), default=1, show_default=True,
              help="chaos: clients following two-step workflow runs, one after another")
@click.option("--fault-every", metavar="MIN-MAX", default="1-3", show_default=True,
              help="chaos: seconds between two faults, drawn in this range")
@click.option("--heartbeat", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="chaos: the daemons' --heartbeat-interval")
@click.option("--sizes", default=None, metavar="N,N,...",
              help="scale: node counts, grown in turn in one mesh [default: 1,2,4,8]")
@click.option("--window", type=click.FloatRange(min=0.5), default=None,
              help="scale: seconds measured per run and mode [default: 6, 1.5 with --quick]")
@click.option("--policies", default=None, metavar="P,P,...",
              help="routing: the policies compared, cache-aware (the default, the scheduler) among them "
                   "[default: cache-aware, power-of-two, round-robin, random]")
@click.option("--only", default=None, metavar="NAME,NAME,...",
              help="all: only these benchmarks, in the suite's order")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="all: write DIR/index.md and PNG charts (needs matplotlib: pip install 'zmqllm[report]')")
@click.option("--json", "as_json", is_flag=True)
def bench(what: str, tokens: int | None, runs: int | None, threads: int | None, llama_server: str | None,
          gpu_layers: int, no_build: bool, quick: bool, echo_only: bool, kill: str, nodes: int, duration: float | None,
          calm: float | None, seed: int | None, clients: int, run_clients: int, fault_every: str,
          heartbeat: float, sizes: str | None, window: float | None, policies: str | None, only: str | None,
          report_dir: str | None, as_json: bool) -> None:
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
    cache:     4 conversations of 8 turns (a ~1,000-token system prompt
               and a growing history) on 3 llama nodes: time to first
               token per turn with cache-aware routing and prefix reuse
               (exact, and longest) / least-loaded without reuse (goal
               <= 0.25 from turn 3), and / llama-server with cache_prompt
               (goal <= 1.0; found or built as for concurrency).
    scale:     1, 2, 4, 8 echo nodes (200 tok/s per stream, 2 slots each),
               a saturating closed loop of N x 2 concurrent 100-token
               streams submitted to one node: aggregate tok/s, scaling
               efficiency (aggregate / (N x one node), goal >= 0.97 at 4,
               >= 0.95 at 8), p50/p99 latency; against the same loop with
               each stream pinned to a fixed node (the ideal), same run.
    routing:   4 uneven echo nodes (one 4x slower, one with half the
               slots), Poisson arrivals of 20/80/200-token tasks at 80 %
               of capacity, the same seeded sequence for each policy, each
               on daemons started with --routing POLICY: p50/p99 latency;
               p99 of the default (cache-aware: least-loaded without a
               cache) / round-robin (goal <= 0.7), / power-of-two (goal
               <= 1.0), / random.
    all:       every benchmark above in turn, each with its baseline and
               the machine; --quick, --only, --report DIR (index.md and
               charts). A benchmark that cannot run says why and the
               others go on (exit 1 at the end).

    \b
    Examples:
      zmqllm bench http --quick
      zmqllm bench http --echo-only --json
      zmqllm bench failover --kill origin
      zmqllm bench chaos --duration 60 --seed 7 --json
      zmqllm bench cache --threads 1
      zmqllm bench scale --sizes 1,2,4
      zmqllm bench routing --duration 60
      zmqllm bench all --quick --json --report /tmp/zmqllm-report
    """
    if what == "all":
        _run_all(quick, only, report_dir, as_json)
        return
    try:
        report = _run_one(what, tokens, runs, threads, llama_server, gpu_layers, no_build, quick, echo_only, kill,
                          nodes, duration, calm, seed, clients, run_clients, fault_every, heartbeat, sizes, window,
                          policies)
    except KeyboardInterrupt:  # what it started is stopped on the way out
        click.echo("bench: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except CliError:
        raise
    except Exception as exc:  # a benchmark that cannot run says why in one line, never a traceback
        from zmqllm.bench.suite import one_line

        raise CliError(f"bench {what} could not run: {one_line(exc)}") from None
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


def _run_one(what: str, tokens: int | None, runs: int | None, threads: int | None, llama_server: str | None,
             gpu_layers: int, no_build: bool, quick: bool, echo_only: bool, kill: str, nodes: int,
             duration: float | None, calm: float | None, seed: int | None, clients: int, run_clients: int,
             fault_every: str, heartbeat: float, sizes: str | None, window: float | None,
             policies: str | None) -> dict:
    """One benchmark's document, by name."""
    from zmqllm.bench import mesh as benchmarks

    progress = _progress(what)
    if what == "messaging":
        return benchmarks.run_messaging(tokens=tokens or 20_000, runs=runs or 5)
    if what == "failover":
        return _run_failover(kill, runs)
    if what == "chaos":
        return _run_chaos(nodes, duration or 120.0, calm, seed, clients, run_clients, fault_every, heartbeat)
    if what == "scale":
        return _run_scale(quick, sizes, runs, tokens, window, progress)
    if what == "cache":
        from zmqllm.bench import cache as cache_bench
        from zmqllm.bench.concurrency import pick_server

        binary, why = pick_server(llama_server, not no_build, progress)
        sizes_ = dict(conversations=2, turns=3, answer_tokens=4, system_sentences=8) if quick else {}
        return cache_bench.run_cache(threads=threads or 1, server_binary=binary, server_why=why, progress=progress,
                                     **sizes_)
    if what == "routing":
        return _run_routing(quick, duration, runs, seed, policies, progress)
    if what == "concurrency":
        from zmqllm.bench import concurrency as concurrency_bench

        return concurrency_bench.run_concurrency(runs=runs or 3, threads=threads or 2, llama_server=llama_server,
                                                 build=not no_build, gpu_layers=gpu_layers,
                                                 progress=lambda line: click.echo(f"bench: {line}", err=True))
    if what == "workflow":
        from zmqllm.bench import workflow as workflow_bench

        return workflow_bench.run_workflow(runs=runs or 3, threads=threads or 1)
    if what == "http":
        return _run_http(runs, tokens, threads, llama_server, no_build, quick, echo_only)
    if what == "dash":
        from zmqllm.bench import dash as dashbench

        return dashbench.run_dash(runs=runs or 5)
    return benchmarks.run_overhead(tokens=tokens or 128, runs=runs or 5,
                                   threads=threads or max(1, (os.cpu_count() or 2) - 1))


def _progress(what: str) -> Callable[[str], None]:
    return lambda line: click.echo(f"bench: {what}: {line}", err=True)


def _numbers(option: str, text: str) -> tuple[int, ...]:
    """`1,2,4` as (1, 2, 4); a usage error naming the option otherwise."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise CliError(f"{option}: expected whole numbers >= 1 separated by commas, got {text!r}", EXIT_USAGE)
    return values


def _names(option: str, text: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """`a,b` as ("a", "b"), each one of `known`; a usage error naming the option otherwise."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise CliError(f"{option}: unknown {', '.join(unknown) or 'nothing given'} (choose from "
                       f"{', '.join(known)})", EXIT_USAGE)
    return names


def _run_scale(quick: bool, sizes: str | None, runs: int | None, tokens: int | None, window: float | None,
               progress: Callable[[str], None]) -> dict:
    from zmqllm.bench import scale

    base = scale.ScaleSettings.quick() if quick else scale.ScaleSettings()
    settings = dataclasses.replace(base, sizes=_numbers("--sizes", sizes) if sizes else base.sizes,
                                   runs=runs or base.runs, tokens=tokens or base.tokens,
                                   window_s=window or base.window_s)
    return scale.run_scale(settings, progress)


def _run_routing(quick: bool, duration: float | None, runs: int | None, seed: int | None, policies: str | None,
                 progress: Callable[[str], None]) -> dict:
    from zmqllm.bench import routing
    from zmqllm.core.scheduler import ROUTING_POLICIES

    base = routing.RoutingSettings.quick() if quick else routing.RoutingSettings()
    chosen = _names("--policies", policies, ROUTING_POLICIES) if policies else base.policies
    if routing.SCHEDULER not in chosen:
        raise CliError(f"--policies: include {routing.SCHEDULER}, the scheduler the others are compared with",
                       EXIT_USAGE)
    settings = dataclasses.replace(base, policies=chosen, duration_s=duration or base.duration_s,
                                   runs=runs or base.runs, seed=base.seed if seed is None else seed)
    return routing.run_routing(settings, progress)


def _run_all(quick: bool, only: str | None, report_dir: str | None, as_json: bool) -> None:
    """`bench all`: every result printed, the report written, then exit 1 if a benchmark could not run."""
    import time

    from zmqllm.bench import suite

    chosen = _names("--only", only, suite.NAMES) if only else ()
    if report_dir is not None:
        from zmqllm.bench.report import ReportError, require_matplotlib

        try:
            require_matplotlib()  # fail before a long run, not after it
        except ReportError as exc:
            raise CliError(str(exc)) from None
    started = time.monotonic()
    try:
        results = suite.run_all(quick, chosen, lambda line: click.echo(f"bench all: {line}", err=True))
    except KeyboardInterrupt:
        click.echo("bench: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    wall_s = time.monotonic() - started
    click.echo(json.dumps(results, indent=2) if as_json else suite.human(results, wall_s))
    if report_dir is not None:
        from zmqllm.bench.report import ReportError, write_report

        try:
            written = write_report(results, Path(report_dir), ["zmqllm", *sys.argv[1:]], wall_s)
        except ReportError as exc:
            raise CliError(str(exc)) from None
        click.echo(f"bench all: report written: {written[0]} and {len(written) - 1} charts", err=True)
    failed = [result["name"] for result in results if result.get("error")]
    if failed:
        click.echo(f"bench all: could not run: {', '.join(failed)} (each result says why)", err=True)
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

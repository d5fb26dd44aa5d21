"""`zmqllm bench`: the benchmarks, each against a raw baseline measured in the same run."""

from __future__ import annotations

import json
import os
import sys

import click

from zmqllm.cli.common import EXIT_INTERRUPTED

@click.command()
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

    from zmqllm.bench import mesh as benchmarks

    try:
        if what == "messaging":
            report = benchmarks.run_messaging(tokens=tokens or 20_000, runs=runs or 5)
        elif what == "failover":
            report = benchmarks.run_failover(runs=max(runs or 10, 10))
        elif what == "concurrency":
            from zmqllm.bench import concurrency as concurrency_bench

            report = concurrency_bench.run_concurrency(runs=runs or 3, threads=threads or 2,
                                                       llama_server=llama_server, build=not no_build,
                                                       gpu_layers=gpu_layers,
                                                       progress=lambda line: click.echo(f"bench: {line}", err=True))
        elif what == "workflow":
            from zmqllm.bench import workflow as workflow_bench

            report = workflow_bench.run_workflow(runs=runs or 3, threads=threads or 1)
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

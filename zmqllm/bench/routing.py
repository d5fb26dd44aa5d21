"""`zmqllm bench routing`: does load-aware placement beat naive placement on an uneven mesh?

Four echo nodes that differ as real machines do: two fast ones, one with half the slots, and one 4× slower.
Tasks of mixed lengths arrive at one node as a Poisson process at ~80 % of the mesh's capacity, from one seeded
sequence that every policy replays exactly. Each policy runs on a fresh mesh whose daemons were started with
`--routing POLICY`; the figures are each task's latency (submit to done), p50 and p99 per policy, and the
scheduler's p99 ÷ each other policy's, all measured in the same run. The scheduler is the nodes' default policy,
cache-aware, which is least-loaded where there is no cache to match (the echo engine's case). Round-robin and
random ignore load, so the slow node's queue grows; power-of-two (Ray Serve's default) looks at two nodes only.
Counts of work are all the scheduler sees, not speed: the slow node still takes a long task when it is the least
loaded, which is what its p99 is made of here.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from zmqllm.bench.chaos import percentile
from zmqllm.bench.mesh import daemons
from zmqllm.bench.scale import join_mesh, parallel_start
from zmqllm.client import AsyncClient
from zmqllm.core.scheduler import CACHE_AWARE, POWER_OF_TWO, RANDOM, ROUND_ROBIN, ROUTING_POLICIES

Progress = Callable[[str], None]

SCHEDULER = CACHE_AWARE
"""The policy the others are compared with: the nodes' default."""
GOALS = {ROUND_ROBIN: 0.7, POWER_OF_TWO: 1.0}
"""Most the scheduler's p99 may be as a fraction of each policy's."""
PROMPT = "routing bench words"
TASK_BOUND_S = 300.0
"""Longest one task may take, its queueing included: past it the run fails with that reason, never hangs."""
CDF_POINTS = 101
"""Latency quantiles kept per policy (0 %, 1 %, ... 100 %): enough to draw its CDF."""


@dataclass(frozen=True)
class NodeSpec:
    """One echo daemon of the uneven mesh."""

    name: str
    echo_rate: float
    slots: int

    @property
    def capacity_tok_s(self) -> float:
        return self.echo_rate * self.slots

    def args(self) -> tuple[str, ...]:
        return "--echo-rate", f"{self.echo_rate:g}", "--slots", str(self.slots)


MESH = (NodeSpec("n0", 200.0, 2), NodeSpec("n1", 50.0, 2), NodeSpec("n2", 200.0, 1), NodeSpec("n3", 200.0, 2))
"""n0 takes the submissions; n1 is 4× slower; n2 has half the slots."""


@dataclass(frozen=True)
class RoutingSettings:
    """What one `bench routing` measures; `quick` keeps the same code path with a shorter arrival sequence."""

    policies: tuple[str, ...] = (SCHEDULER, POWER_OF_TWO, ROUND_ROBIN, RANDOM)
    load: float = 0.8
    """Offered tokens/s as a fraction of the mesh's total (every slot streaming)."""
    lengths: tuple[int, ...] = (20, 80, 200)
    """Task lengths in tokens, each equally likely (mean 100)."""
    duration_s: float = 30.0
    """Seconds of arrivals per policy (then the tasks in flight finish)."""
    runs: int = 2
    seed: int = 20
    heartbeat_s: float = 0.5

    @classmethod
    def quick(cls) -> RoutingSettings:
        return cls(duration_s=3.0, runs=1)

    @property
    def arrivals_per_s(self) -> float:
        capacity = sum(node.capacity_tok_s for node in MESH)
        return self.load * capacity / statistics.mean(self.lengths)


def arrivals(settings: RoutingSettings, run: int) -> list[tuple[float, int]]:
    """(seconds after the start, tokens) of each task of run `run`: the same for every policy."""
    draws = random.Random(settings.seed * 1000 + run)
    schedule, at = [], draws.expovariate(settings.arrivals_per_s)
    while at < settings.duration_s:
        schedule.append((at, draws.choice(settings.lengths)))
        at += draws.expovariate(settings.arrivals_per_s)
    return schedule


async def replay(origin: str, schedule: Sequence[tuple[float, int]]) -> tuple[list[float], dict[str, int]]:
    """Submit each task at its time, without waiting for earlier ones (an open loop): every done task's latency,
    and the count of failed tasks per error code."""
    latencies: list[float] = []
    failed: dict[str, int] = {}
    async with AsyncClient(origin, timeout=30) as client:
        await client.status()
        started = time.perf_counter()

        async def one(at: float, tokens: int) -> None:
            await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
            submitted = time.perf_counter()
            async with asyncio.timeout(TASK_BOUND_S):
                async for event in client.submit(PROMPT, max_tokens=tokens):
                    if event["type"] == "done":
                        latencies.append(time.perf_counter() - submitted)
                    elif event["type"] == "error":
                        failed[event["code"]] = failed.get(event["code"], 0) + 1

        await asyncio.gather(*(one(at, tokens) for at, tokens in schedule))
    return latencies, failed


def _run_policy(policy: str, settings: RoutingSettings, progress: Progress) -> dict[str, Any]:
    """Every run of one policy on its own fresh mesh."""
    latencies: list[float] = []
    p99s, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="zmqllm-bench-routing-") as home, daemons(home) as start:
        common = ("--routing", policy, "--heartbeat-interval", f"{settings.heartbeat_s:g}")
        first, *others = MESH
        _, origin = start(first.name, *first.args(), *common)
        parallel_start(start, [(node.name, ("--peer", origin, *node.args(), *common)) for node in others])
        join_mesh(origin, [node.name for node in others])
        for run in range(settings.runs):
            schedule = arrivals(settings, run)
            run_latencies, run_failed = asyncio.run(replay(origin, schedule))
            latencies += run_latencies
            failed += sum(run_failed.values())
            p99s.append(percentile(run_latencies, 0.99) or 0.0)
            progress(f"{policy} run {run + 1}/{settings.runs}: {len(schedule)} tasks, p50 "
                     f"{percentile(run_latencies, 0.5) or 0:.2f} s, p99 {p99s[-1]:.2f} s"
                     + (f", {sum(run_failed.values())} failed {run_failed}" if run_failed else ""))
    ordered = sorted(latencies)
    return {"tasks": len(latencies), "failed": failed, "p50_s": _rounded(percentile(latencies, 0.5)),
            "p99_s": _rounded(percentile(latencies, 0.99)),
            "p99_runs_s": {"median": round(statistics.median(p99s), 3), "min": round(min(p99s), 3),
                           "max": round(max(p99s), 3)},
            "cdf_s": [round(ordered[min(len(ordered) - 1, int(i * len(ordered) / (CDF_POINTS - 1)))], 3)
                      for i in range(CDF_POINTS)] if ordered else []}


def run_routing(settings: RoutingSettings = RoutingSettings(), progress: Progress = lambda line: None
                ) -> dict[str, Any]:
    """The CONTRACT's benchmark document. RuntimeError, one line, when a mesh cannot start."""
    unknown = [p for p in settings.policies if p not in ROUTING_POLICIES]
    if unknown or SCHEDULER not in settings.policies:
        raise RuntimeError(f"policies must include {SCHEDULER} and be among {', '.join(ROUTING_POLICIES)}")
    progress(f"{len(settings.policies)} policies, {settings.runs} x {settings.duration_s:g} s of arrivals each at "
             f"{settings.arrivals_per_s:.1f} tasks/s ({settings.load:.0%} of capacity)")
    policies = {policy: _run_policy(policy, settings, progress) for policy in settings.policies}
    return build_report(settings, policies)


def build_report(settings: RoutingSettings, policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    scheduler = policies[SCHEDULER]
    ratios = {f"p99_over_{p}": round(scheduler["p99_s"] / policies[p]["p99_s"], 3)
              for p in policies if p != SCHEDULER and scheduler["p99_s"] and policies[p]["p99_s"]}
    ratios.update({f"p50_over_{p}": round(scheduler["p50_s"] / policies[p]["p50_s"], 3)
                   for p in policies if p != SCHEDULER and scheduler["p50_s"] and policies[p]["p50_s"]})
    judged = {p: ratios[f"p99_over_{p}"] <= goal for p, goal in GOALS.items() if f"p99_over_{p}" in ratios}
    report = {"bench": "routing", "name": "routing",
              "settings": {**asdict(settings), "mesh": [asdict(node) for node in MESH],
                           "arrivals_per_s": round(settings.arrivals_per_s, 2)},
              "figures": {"policies": policies, "ratios": ratios},
              "ratio": ratios.get(f"p99_over_{ROUND_ROBIN}"),
              "baseline": f"p99 latency with the scheduler ({SCHEDULER}, the default) ÷ with round-robin, same "
                          "seeded arrivals",
              "goal": {f"p99_over_{p}": goal for p, goal in GOALS.items()},
              "met": all(judged.values()) if judged else None}
    report["summary"] = summary(report)
    return report


def summary(report: dict[str, Any]) -> str:
    s, f = report["settings"], report["figures"]
    mesh = ", ".join(f"{n['name']} {n['echo_rate']:g} tok/s x {n['slots']} slots" for n in s["mesh"])
    lines = [f"routing: Poisson arrivals at {s['arrivals_per_s']} tasks/s ({s['load']:.0%} of capacity) of "
             f"{'/'.join(map(str, s['lengths']))}-token tasks to n0, {s['runs']} x {s['duration_s']:g} s, seed "
             f"{s['seed']}, the same sequence for every policy; mesh: {mesh}"]
    for policy, part in f["policies"].items():
        lines.append(f"  {policy:<13} p50 {part['p50_s']} s, p99 {part['p99_s']} s (p99 per run "
                     f"{part['p99_runs_s']['min']}-{part['p99_runs_s']['max']} s), {part['tasks']} tasks done, "
                     f"{part['failed']} failed")
    for policy in f["policies"]:
        key = f"p99_over_{policy}"
        if key not in f["ratios"]:
            continue
        goal = GOALS.get(policy)
        verdict = (f" (goal <= {goal:g}: {'met' if f['ratios'][key] <= goal else 'NOT met'})" if goal is not None
                   else " (no goal)")
        lines.append(f"  p99 {SCHEDULER} / {policy}: {f['ratios'][key]:.3f}{verdict}; p50 "
                     f"{f['ratios'].get(f'p50_over_{policy}')}")
    return "\n".join(lines)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

"""`zmqllm bench scale`: does adding nodes add throughput?

N echo daemons, each at a fixed token rate per stream with a fixed number of slots (standing in for one
machine's model), are loaded by a saturating closed loop: N × slots clients, all submitting to the first node,
each starting its next 100-token stream as soon as the last ends. The figure is the aggregate tokens/s received
inside a measured window, and the scaling efficiency is that ÷ (N × the one-node figure). The ideal, measured in
the same run on the same mesh, rounds alternating, is the same loop with static pinning: client i always pinned
(`--peer`) to node i ÷ slots, so every slot is busy by construction. Placement that leaves a slot idle while a
task queues elsewhere shows as the scheduler's efficiency falling below pinning's.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from zmqllm.bench.chaos import percentile
from zmqllm.bench.http import spread
from zmqllm.bench.mesh import _wait_for_peer, daemons
from zmqllm.client import AsyncClient

Progress = Callable[[str], None]
Start = Callable[..., Any]
"""`start(name, *daemon_args)` of `zmqllm.bench.mesh.daemons`: a daemon and its endpoint."""

GOALS = {4: 0.97, 8: 0.95}
"""Scaling efficiency the scheduler must reach at these node counts (static pinning reaches ≈ 0.99)."""
PROMPT = "scale bench words"
STREAM_BOUND_S = 60.0
"""Longest one stream may take: past it the loop fails with that reason, never hangs."""
SCHEDULER, PINNED = "scheduler", "pinned"


@dataclass(frozen=True)
class ScaleSettings:
    """What one `bench scale` measures; `quick` sizes keep the same code path."""

    sizes: tuple[int, ...] = (1, 2, 4, 8)
    slots: int = 2
    echo_rate: float = 200.0
    """Tokens/s of each stream on a node (the echo engine's rate per slot)."""
    tokens: int = 100
    runs: int = 3
    warmup_s: float = 1.0
    window_s: float = 6.0
    heartbeat_s: float = 0.5

    @classmethod
    def quick(cls) -> ScaleSettings:
        return cls(runs=1, warmup_s=0.5, window_s=1.5)


@dataclass
class LoopFigures:
    """One closed-loop window: tokens/s received inside it and the latency of each task submitted in it."""

    tok_s: float
    latencies_s: list[float]


def parallel_start(start: Start, launches: Sequence[tuple[str, tuple[str, ...]]]) -> list[str]:
    """Start several daemons, (name, daemon args) each, at once (each waits for its own ready line in a
    thread, so a mesh of 8 starts in about the time of one); their endpoints."""
    with ThreadPoolExecutor(max_workers=max(1, len(launches))) as pool:
        return [endpoint for _, endpoint in pool.map(lambda launch: start(launch[0], *launch[1]), launches)]


def join_mesh(origin: str, names: Sequence[str]) -> None:
    """Until the origin sees every one of `names` alive (each bounded; RuntimeError naming the one missing)."""
    for name in names:
        asyncio.run(_wait_for_peer(origin, name))


async def closed_loop(origin: str, pins: Sequence[str | None], tokens: int, warmup_s: float,
                      window_s: float) -> LoopFigures:
    """One client per entry of `pins` (a node name to pin its tasks to, or None to let the scheduler place
    them), each submitting `tokens`-token streams back to back until the window ends."""
    received = 0
    latencies: list[float] = []
    async with AsyncClient(origin, timeout=30) as client:
        await client.status()
        opened = time.perf_counter() + warmup_s
        closed = opened + window_s

        async def one_client(pin: str | None) -> None:
            nonlocal received
            while time.perf_counter() < closed:
                submitted = time.perf_counter()
                async with asyncio.timeout(STREAM_BOUND_S):
                    async for event in client.submit(PROMPT, peer=pin, max_tokens=tokens):
                        if event["type"] == "token":
                            if opened <= time.perf_counter() < closed:
                                received += 1
                        elif event["type"] == "error":
                            raise RuntimeError(f"a stream failed: {event['code']}: {event['message']}")
                        elif event["type"] == "done" and submitted >= opened:
                            latencies.append(time.perf_counter() - submitted)

        await asyncio.gather(*(one_client(pin) for pin in pins))
    return LoopFigures(received / window_s, latencies)


def _measure_size(origin: str, nodes: int, settings: ScaleSettings, progress: Progress) -> dict[str, Any]:
    """`runs` windows of each mode on a mesh of `nodes`, the modes taking turns to go first."""
    streams = nodes * settings.slots
    pins = {SCHEDULER: [None] * streams, PINNED: [f"n{i // settings.slots}" for i in range(streams)]}
    rates: dict[str, list[float]] = {SCHEDULER: [], PINNED: []}
    latencies: dict[str, list[float]] = {SCHEDULER: [], PINNED: []}
    for run in range(settings.runs):
        for mode in (SCHEDULER, PINNED) if run % 2 == 0 else (PINNED, SCHEDULER):
            loop = asyncio.run(closed_loop(origin, pins[mode], settings.tokens, settings.warmup_s, settings.window_s))
            rates[mode].append(loop.tok_s)
            latencies[mode] += loop.latencies_s
        progress(f"N={nodes} run {run + 1}/{settings.runs}: scheduler {rates[SCHEDULER][-1]:,.0f} tok/s, "
                 f"pinned {rates[PINNED][-1]:,.0f} tok/s")
    return {mode: {"tok_s": spread(rates[mode]), "p50_s": _rounded(percentile(latencies[mode], 0.5)),
                   "p99_s": _rounded(percentile(latencies[mode], 0.99)), "tasks": len(latencies[mode])}
            for mode in (SCHEDULER, PINNED)}


def run_scale(settings: ScaleSettings = ScaleSettings(), progress: Progress = lambda line: None) -> dict[str, Any]:
    """The CONTRACT's benchmark document. The mesh grows from 1 node to the largest size (n0 first, the others
    seeded with it), measured at each size. RuntimeError, one line, when the mesh cannot start or a stream
    fails."""
    args = ("--echo-rate", f"{settings.echo_rate:g}", "--slots", str(settings.slots),
            "--heartbeat-interval", f"{settings.heartbeat_s:g}", "--queue-limit", "64")
    rows: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="zmqllm-bench-scale-") as home, daemons(home) as start:
        _, origin = start("n0", *args)
        running = 1
        for nodes in sorted(set(settings.sizes)):
            joining = [f"n{i}" for i in range(running, nodes)]
            running = max(running, nodes)
            parallel_start(start, [(name, ("--peer", origin, *args)) for name in joining])
            join_mesh(origin, joining)
            progress(f"N={nodes}: {nodes * settings.slots} concurrent {settings.tokens}-token streams, "
                     f"{settings.runs} x {settings.window_s:g} s windows each way")
            rows[nodes] = _measure_size(origin, nodes, settings, progress)
    return build_report(settings, rows)


def build_report(settings: ScaleSettings, rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Efficiency of each mode at each size against its own one-node figure (the smallest size measured,
    scaled to one node)."""
    smallest = min(rows)
    one_node = {mode: rows[smallest][mode]["tok_s"]["median"] / smallest for mode in (SCHEDULER, PINNED)}
    sizes = []
    for nodes, row in sorted(rows.items()):
        entry: dict[str, Any] = {"nodes": nodes, "streams": nodes * settings.slots,
                                 "nominal_tok_s": nodes * settings.slots * settings.echo_rate}
        for mode in (SCHEDULER, PINNED):
            entry[mode] = {**row[mode], "efficiency": round(row[mode]["tok_s"]["median"] / (nodes * one_node[mode]), 3)}
        entry["scheduler_over_pinned"] = round(row[SCHEDULER]["tok_s"]["median"] / row[PINNED]["tok_s"]["median"], 3)
        sizes.append(entry)
    efficiency = {entry["nodes"]: entry[SCHEDULER]["efficiency"] for entry in sizes}
    judged = {n: efficiency[n] >= goal for n, goal in GOALS.items() if n in efficiency}
    largest = max(efficiency)
    report = {"bench": "scale", "name": "scale", "settings": asdict(settings),
              "figures": {"sizes": sizes, "one_node_tok_s": {m: round(v, 1) for m, v in one_node.items()}},
              "ratio": efficiency[largest],
              "baseline": f"scaling efficiency at N={largest}: aggregate tok/s ÷ (N × one node); static pinning "
                          "in the same run is the ideal",
              "goal": {f"efficiency_at_{n}": goal for n, goal in GOALS.items()},
              "met": all(judged.values()) if judged else None}
    report["summary"] = summary(report)
    return report


def summary(report: dict[str, Any]) -> str:
    s, f = report["settings"], report["figures"]
    lines = [f"scale: N echo nodes ({s['echo_rate']:g} tok/s per stream, {s['slots']} slots each), a closed loop "
             f"of N x {s['slots']} concurrent {s['tokens']}-token streams submitted to one node; median [min-max] "
             f"of {s['runs']} x {s['window_s']:g} s windows",
             "  efficiency = aggregate tok/s / (N x one node); baseline: the same loop with each stream pinned "
             "to a fixed node (the ideal), same run"]
    for entry in f["sizes"]:
        sched, pinned = entry[SCHEDULER], entry[PINNED]
        goal = GOALS.get(entry["nodes"])
        verdict = (f"  (goal >= {goal:g}: {'met' if sched['efficiency'] >= goal else 'NOT met'})"
                   if goal is not None else "")
        lines.append(f"  N={entry['nodes']}: scheduler {_rate(sched['tok_s'])} eff {sched['efficiency']:.3f}, "
                     f"p50/p99 {sched['p50_s']}/{sched['p99_s']} s; pinned {_rate(pinned['tok_s'])} eff "
                     f"{pinned['efficiency']:.3f}, p50/p99 {pinned['p50_s']}/{pinned['p99_s']} s; "
                     f"scheduler/pinned {entry['scheduler_over_pinned']:.3f}{verdict}")
    return "\n".join(lines)


def _rate(part: dict[str, Any]) -> str:
    return f"{part['median']:,.0f} tok/s [{part['min']:,.0f}-{part['max']:,.0f}]"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

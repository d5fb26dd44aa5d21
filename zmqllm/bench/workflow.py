"""`zmqllm bench workflow`: the map-reduce example on 3 nodes against the same on 1 node, same run.

The map phase is one task per chunk, all independent, so 3 nodes should take
about a third of the time 1 node takes, plus the one merge task that follows.
Each node runs one task at a time (`--slots 1`), so a node is a fixed amount of
capacity: with the echo engine at a fixed token rate the ratio measures the
orchestration alone; with the bundled model it is what a user sees (on a
machine with fewer cores than nodes the nodes share the cores, and say so).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from zmqllm.bench.mesh import _wait_for_peer, daemons
from zmqllm.client import AsyncClient

SPEC = Path(__file__).resolve().parents[2] / "configs" / "workflows" / "map-reduce-summary.toml"
ECHO_RATE = 200.0
"""Echo tokens per second per node: a fixed per-node capacity."""
PARAGRAPH = ("The harbour town of Velm grew around its lighthouse. Fishermen sold their catch at dawn, and the market "
             "closed at noon. A storm destroyed the old pier, and the town rebuilt it in stone. Merchants later brought "
             "tea, salt and wool, and the school opened. Visitors come for the festival of lights every autumn. ")


def document(chunks: int) -> str:
    """A text the example splits into exactly `chunks` chunks (one paragraph of ~1,100 characters each)."""
    return "\n\n".join(f"Part {i}. " + PARAGRAPH * 3 for i in range(1, chunks + 1))


async def _timed_run(endpoint: str, spec: str, text: str) -> tuple[float, int]:
    async with AsyncClient(endpoint, timeout=60) as client:
        started = time.perf_counter()
        final: dict[str, Any] = {}
        async for event in client.run(spec, text, source=SPEC.name):
            final = event
        elapsed = time.perf_counter() - started
    if final.get("type") != "done" or final.get("state") != "done":
        raise RuntimeError(f"the run did not finish: {final.get('message') or final}")
    return elapsed, len(final["tasks"])


def _mesh_times(nodes: int, engine_args: tuple[str, ...], spec: str, text: str, runs: int) -> tuple[list[float], int]:
    with tempfile.TemporaryDirectory() as home, daemons(home) as start:
        _, endpoint = start("n1", "--slots", "1", *engine_args)
        for i in range(2, nodes + 1):
            start(f"n{i}", "--slots", "1", "--peer", endpoint, *engine_args)
            asyncio.run(_wait_for_peer(endpoint, f"n{i}"))
        results = [asyncio.run(_timed_run(endpoint, spec, text)) for _ in range(runs)]
    return [elapsed for elapsed, _ in results], results[0][1]


def _compare(label: str, engine_args: tuple[str, ...], chunks: int, runs: int) -> dict[str, Any]:
    spec, text = SPEC.read_text(encoding="utf-8"), document(chunks)
    one, tasks = _mesh_times(1, engine_args, spec, text, runs)
    three, _ = _mesh_times(3, engine_args, spec, text, runs)
    ratio = statistics.median(three) / statistics.median(one)
    return {"engine": label, "chunks": chunks, "tasks": tasks, "runs": runs,
            "one_node_s": [round(x, 2) for x in one], "three_nodes_s": [round(x, 2) for x in three],
            "ratio": round(ratio, 3)}


def run_workflow(runs: int = 3, llama: bool = True, threads: int = 1) -> dict[str, Any]:
    """Wall time of the map-reduce example, 3 nodes ÷ 1 node, echo (fixed rate) and the bundled model."""
    if not SPEC.is_file():
        raise RuntimeError(f"{SPEC} is missing: run the benchmark from a checkout of the project")
    rows = [_compare(f"echo {ECHO_RATE:g} tok/s per node", ("--echo-rate", str(ECHO_RATE)), 24, runs)]
    if llama:
        rows.append(_compare(f"llama bundled, {threads} thread(s) per node",
                             ("--engine", "llama", "--model", "bundled:gemma3-270m", "--threads", str(threads)),
                             6, max(1, min(runs, 2))))
    lines = [f"workflow: map-reduce-summary, wall time on 3 nodes / on 1 node (slots 1 each), this machine "
             f"{os.cpu_count()} cores"]
    for row in rows:
        goal = "  (goal <= 0.40)" if row["engine"].startswith("echo") else ""
        lines.append(f"  {row['engine']}: {row['chunks']} chunks, {row['tasks']} tasks; "
                     f"1 node {statistics.median(row['one_node_s']):.2f} s {row['one_node_s']}, "
                     f"3 nodes {statistics.median(row['three_nodes_s']):.2f} s {row['three_nodes_s']}; "
                     f"ratio {row['ratio']:.3f}{goal}")
    return {"bench": "workflow", "rows": rows, "summary": "\n".join(lines)}

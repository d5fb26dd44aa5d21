"""Workflow runs under `zmqllm bench chaos`: clients following two-step runs while nodes die, freeze and come back.

A run's orchestrator may be hit like any node: its replica's holder adopts the run and the client follows the
adopter. Afterwards each run is judged (pure: `check_run`): it ended once, with the output the echo engine's text
makes of its input, each step's output in the result once; and across the mesh (`finished_once`) no run was
finished by two nodes (a thawed orchestrator that another node adopted the run from must not end it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from zmqllm.bench.mesh import expected_echo
from zmqllm.client import AsyncClient, MeshUnreachable, RequestFailed

SECOND_TOKENS = 40
"""The second step's length: long enough (0.4 s at 100 tok/s) for faults to land while it runs."""


def two_steps(second_tokens: int, defaults: str = "") -> str:
    """A workflow of two steps, the second fed by the first (4 tokens): long enough to be hit while it runs."""
    return f"""
name = "two-steps"
{defaults}
[[steps]]
name = "first"
prompt = "first {{input}}"
max_tokens = 4
[[steps]]
name = "second"
prompt = "second {{first}}"
max_tokens = {second_tokens}
"""


SPEC = two_steps(SECOND_TOKENS)
KEYS = ["first", "second"]


@dataclass
class RunRecord:
    """One run as its client saw it."""

    run_id: str
    input: str
    node: str
    submitted: float
    events: list[dict[str, Any]] = field(default_factory=list)
    ended: float | None = None
    gave_up: str | None = None


def expected_output(input_text: str) -> str:
    """What the echo engine makes of the run: the first step's 4 words fed to the second."""
    first = expected_echo(f"first {input_text}", 4)
    return expected_echo(f"second {first}", SECOND_TOKENS).strip()


def check_run(record: RunRecord) -> str:
    """Why this run broke an invariant ("" if it did not): one ending, the last event; a done run's output as
    the echo makes it; each step's output once in its result. A run that failed with a reason is no violation."""
    endings = [i for i, e in enumerate(record.events) if e["type"] in ("done", "error")]
    if not endings:
        return "" if (record.gave_up or "").startswith("unreachable") else f"no ending ({record.gave_up})"
    if len(endings) > 1 or endings[0] != len(record.events) - 1:
        return f"{len(endings)} endings"
    final = record.events[-1]
    if final["type"] != "done":
        return ""
    keys = [task.get("key") for task in final.get("tasks", [])]
    if sorted(keys) != KEYS:
        return f"step outputs in the result: {keys}"
    if final.get("output") != expected_output(record.input):
        return "output differs from the echo's"
    return ""


def outcome(record: RunRecord) -> str:
    final = record.events[-1] if record.events and record.events[-1]["type"] in ("done", "error") else None
    if final is None:
        return (record.gave_up or "no ending").split(":")[0]
    return "done" if final["type"] == "done" else str(final.get("code"))


def finished_once(rows_by_node: dict[str, list[dict[str, Any]]], run_ids: Sequence[str]) -> dict[str, list[str]]:
    """The runs that more than one node recorded as done (a split brain), with those nodes."""
    done_on: dict[str, list[str]] = {}
    for node, rows in rows_by_node.items():
        for row in rows:
            if row.get("run_id") in run_ids and row.get("state") == "done":
                done_on.setdefault(row["run_id"], []).append(node)
    return {run_id: nodes for run_id, nodes in done_on.items() if len(nodes) > 1}


def summarize_runs(records: Sequence[RunRecord], split: dict[str, list[str]], asked: int) -> dict[str, Any]:
    violations = [(r, why) for r in records if (why := check_run(r))]
    outcomes = Counter(outcome(r) for r in records)
    moves = sum(1 for r in records for e in r.events if e["type"] == "failover")
    adopted = sum(1 for r in records for e in r.events if e["type"] == "run" and e.get("adopted_from"))
    return {"submitted": len(records), "done": outcomes.pop("done", 0), "failed": sum(outcomes.values()),
            "failed_by_reason": dict(outcomes.most_common()), "client_moves": moves, "adoptions_seen": adopted,
            "violations": len(violations) + len(split),
            "violation_samples": [{"run_id": r.run_id, "why": why} for r, why in violations[:10]],
            "finished_by_several_nodes": split, "nodes_asked": asked}


async def run_one(record: RunRecord, endpoint: str, others: Sequence[str], timeout: float, bound_s: float) -> None:
    """Follow one run to its end (its client moves when its node is lost), bounded by `bound_s`."""
    try:
        async with AsyncClient(endpoint, timeout=timeout) as client:
            client.endpoints = [endpoint, *others]
            async with asyncio.timeout(bound_s):
                async for event in client.run(SPEC, record.input, source="chaos.toml", run_id=record.run_id):
                    record.events.append(event)
    except TimeoutError:
        record.gave_up = "hung"
    except MeshUnreachable as exc:
        record.gave_up = f"unreachable: {exc}"
    except RequestFailed as exc:
        record.events.append({"type": "error", "code": exc.code, "message": exc.message})
    record.ended = time.monotonic()


async def run_client_loop(serving: Any, timeout: float, bound_s: float, rng: random.Random,
                          records: list[RunRecord], ending: asyncio.Event, words: Sequence[str]) -> None:
    """Start runs one after another on a random serving node until `ending` (`serving()`: the nodes up now)."""
    while not ending.is_set():
        nodes = serving()
        if not nodes:
            await asyncio.sleep(0.1)
            continue
        node = rng.choice(nodes)
        others = [n.endpoint for n in nodes if n is not node]
        record = RunRecord(uuid.uuid4().hex[:12], " ".join(rng.choice(words) for _ in range(3)), node.name,
                           time.monotonic())
        records.append(record)
        await run_one(record, node.endpoint, others, timeout, bound_s)


async def runs_by_node(nodes: Sequence[Any], timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Every running node's own runs (`runs --here`), for the exactly-once check."""
    rows: dict[str, list[dict[str, Any]]] = {}

    async def ask(node: Any) -> None:
        with contextlib.suppress(MeshUnreachable, RequestFailed, TimeoutError):
            async with AsyncClient(node.endpoint, timeout=timeout) as client:
                rows[node.name] = await client.runs()

    await asyncio.gather(*(ask(node) for node in nodes))
    return rows

"""Runs without a home node: the orchestrator of a workflow run dies mid-run, the peer holding the run's replica
adopts it and finishes it, re-running only the unfinished steps, and a client attached to the run follows the
adopter to the end (real daemons, echo engine)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from conftest import run_cli, states, two_steps, wait_until

from zmqllm.client import AsyncClient

TWO_STEPS = two_steps(60)


def _mesh(spawn: Any) -> list[Any]:
    a = spawn("a", "--echo-rate", "40")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "40")
    c = spawn("c", "--peer", a.endpoint, "--echo-rate", "40")
    wait_until(lambda: all(list(states(n).values()) == ["alive"] * 3 for n in (a, b, c)), 10, what="mesh")
    return [a, b, c]


def test_a_killed_orchestrators_run_is_adopted_and_finished_once(spawn: Any, zmqllm_env: Any) -> None:
    """Fails on the code before this change: the client's stream ended with the orchestrator's connection and the
    run stayed `running` nowhere but in a's journal, until someone ran `--resume` on a."""
    nodes = _mesh(spawn)
    a = nodes[0]

    async def run() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async with AsyncClient(a.endpoint, timeout=5) as client:
            async for event in client.run(TWO_STEPS, "go", source="two.toml", run_id="homeless"):
                events.append(event)
                if event["type"] == "task" and event["key"] == "second" and event["state"] == "started":
                    a.kill()  # mid-run: "first" finished (and replicated), "second" running
        return events

    events = asyncio.run(run())
    failovers = [e for e in events if e["type"] == "failover"]
    assert len(failovers) == 1 and failovers[0]["kind"] == "orchestrator", failovers
    adopted = [e for e in events if e["type"] == "run" and e.get("adopted_from")]
    assert len(adopted) == 1 and adopted[0]["adopted_from"] == "a" and adopted[0]["epoch"] == 2, events
    adopter = adopted[0]["orchestrator"]
    assert adopter in ("b", "c")
    final = events[-1]
    assert final["type"] == "done" and final["state"] == "done", final
    assert [t["key"] for t in final["tasks"]] == ["first", "second"]  # each step's output once
    assert final["tasks"][0].get("from_replica") and not final["tasks"][1].get("from_replica")
    assert final["output"].startswith("second first go")
    # the adopter started "second" once; "first" came from the replica, it never ran again
    after = events[events.index(adopted[0]):]
    assert [e["key"] for e in after if e["type"] == "task" and e["state"] == "started"] == ["second"]
    # `runs` on any node shows it done, orchestrated by the adopter; any node's `run --attach` reaches its ending
    other = next(n for n in nodes[1:] if n.name != adopter)
    listed = json.loads(run_cli(zmqllm_env, "runs", "--json", "--connect", other.endpoint).stdout)
    assert [(r["run_id"], r["state"], r["orchestrator"]) for r in listed] == [("homeless", "done", adopter)]
    here = json.loads(run_cli(zmqllm_env, "runs", "--here", "--json", "--connect", other.endpoint).stdout)
    assert [r["state"] for r in here if r["run_id"] == "homeless"] in ([], ["replica"])  # it only held the end
    attached = run_cli(zmqllm_env, "run", "--attach", "homeless", "--json", "--connect", other.endpoint)
    assert attached.returncode == 0, attached.stderr
    assert json.loads(attached.stdout.splitlines()[-1])["output"] == final["output"]


def test_a_run_whose_holder_dies_gets_another_holder_and_finishes_where_it_began(spawn: Any) -> None:
    """Killing the holder, not the owner: the owner rehomes the replica and ends the run itself, once."""
    nodes = _mesh(spawn)
    a = nodes[0]
    holders: list[str] = []

    async def run() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async with AsyncClient(a.endpoint, timeout=5) as client:
            async for event in client.run(TWO_STEPS, "go", run_id="holder-dies"):
                events.append(event)
                if event["type"] == "task" and event["key"] == "second" and event["state"] == "started":
                    rows = await client.runs()  # the holder is whichever peer a says it replicates to
                    holders.extend(r.get("holder") or "" for r in rows if r["run_id"] == "holder-dies")
                    victim = next(n for n in nodes if n.name == holders[0])
                    victim.kill()
        return events

    events = asyncio.run(run())
    assert holders and holders[0] in ("b", "c"), holders
    assert not [e for e in events if e["type"] == "failover"]
    final = events[-1]
    assert final["type"] == "done" and final["state"] == "done" and [t["key"] for t in final["tasks"]] == [
        "first", "second"], final


def test_a_person_following_a_run_is_told_of_the_adoption_in_words() -> None:
    import io

    from zmqllm.cli.stream_run import _Printer

    out, err = io.StringIO(), io.StringIO()
    printer = _Printer(out, err, as_json=False)
    printer.show({"type": "failover", "kind": "orchestrator", "run_id": "r", "from": "tcp://a", "to": "tcp://b",
                  "reason": "node lost"})
    printer.show({"type": "run", "run_id": "r", "workflow": "w", "orchestrator": "b", "adopted_from": "a",
                  "epoch": 2, "attached": True, "resumed": True, "from_journal": ["first"]})
    printer.show({"type": "error", "run_id": "r", "code": "peer_dead", "message": "moved: zmqllm run --attach r"})
    lines = err.getvalue().splitlines()
    assert lines[0] == "[orchestrator lost (node lost): following the run from tcp://b]"
    assert lines[1] == "run r (w) adopted from a on b; 1 task(s) from its replica"
    assert lines[2:] == ["error: peer_dead: moved: zmqllm run --attach r"]  # no contradicting resume advice

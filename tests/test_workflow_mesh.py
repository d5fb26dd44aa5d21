"""Workflow runs on real daemons over real sockets (echo engine): parallel branches, failover, resume, cancel."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, states, two_steps, wait_until

from zmqllm.client import AsyncClient, RequestFailed

REPO = Path(__file__).resolve().parent.parent
ENSEMBLE = (REPO / "configs" / "workflows" / "ensemble.toml").read_text()

TWO_STEPS = two_steps(150, "[defaults]\ntemperature = 0.0")


@pytest.fixture
def mesh(spawn: Any) -> list[Any]:
    a = spawn("a", "--echo-rate", "40")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "40")
    c = spawn("c", "--peer", a.endpoint, "--echo-rate", "40")
    wait_until(lambda: len(states(a)) == 3, 5, what="mesh")
    return [a, b, c]


def _collect(endpoint: str, spec: str | None = None, input: str = "", **kwargs: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        async with AsyncClient(endpoint, timeout=10) as client:
            return [event async for event in client.run(spec, input, **kwargs)]

    return asyncio.run(run())


def _started(events: list[dict[str, Any]]) -> list[str]:
    return [e["key"] for e in events if e["type"] == "task" and e["state"] == "started"]


def test_ensemble_branches_run_in_parallel_on_distinct_peers_and_vote(mesh: list[Any]) -> None:
    events = _collect(mesh[0].endpoint, ENSEMBLE, "What is the largest planet?", source="ensemble.toml")
    assert events[0]["type"] == "run" and events[0]["orchestrator"] == "a"
    final = events[-1]
    assert final["type"] == "done" and final["state"] == "done", final
    branches = [t for t in final["tasks"] if t["step"] == "answer"]
    assert sorted(t["key"] for t in branches) == ["answer#1", "answer#2", "answer#3"]
    assert len({t["executed_by"] for t in branches}) == 3  # distinct_peers, three idle peers
    assert max(t["started"] for t in branches) < min(t["ended"] for t in branches), "branches overlap in time"
    # echo repeats the prompt: every branch gives the same first line, so the vote returns it
    assert final["output"] == final["output"].strip() and "Q: What is the capital of Italy?" in final["output"]


def test_a_branch_whose_peer_is_killed_fails_over_and_the_run_completes(mesh: list[Any]) -> None:
    a, b, _ = mesh

    async def run() -> list[dict[str, Any]]:
        events = []
        async with AsyncClient(a.endpoint, timeout=10) as client:
            spec = ENSEMBLE.replace("max_tokens = 48", "max_tokens = 120")
            async for event in client.run(spec, "Which planet?", source="ensemble.toml"):
                events.append(event)
                running = event["type"] == "progress" and any(
                    t["peer"] == "b" and t["tokens"] >= 20 for t in event["tasks"])
                if running and b.proc.poll() is None:
                    b.kill()
        return events

    events = asyncio.run(run())
    assert b.proc.poll() is not None, "b was never seen streaming"
    final = events[-1]
    assert final["type"] == "done" and final["state"] == "done", final
    moved = [t for t in final["tasks"] if t["executed_on"][0] == "b"]
    assert len(moved) == 1 and moved[0]["executed_by"] in ("a", "c") and moved[0]["tokens"] == 120, final["tasks"]
    assert any(e["type"] == "task" and e["state"] == "failover" and e["from"] == "b" for e in events)


def test_killed_lone_orchestrator_resumes_the_run_without_rerunning_finished_steps(spawn: Any,
                                                                                 zmqllm_env: Any) -> None:
    """A node alone has no peer to hold its runs' replicas (tests/test_run_adoption.py): its journal is what
    `--resume` continues from."""
    a = spawn("a", "--echo-rate", "40")

    async def until_second_runs() -> str:
        async with AsyncClient(a.endpoint, timeout=10) as client:
            async for event in client.run(TWO_STEPS, "go", source="two.toml", run_id="resume-me"):
                if event["type"] == "task" and event["key"] == "second" and event["state"] == "started":
                    a.kill()
                    return event["run_id"]
        raise AssertionError("the second step never started")

    run_id = asyncio.run(until_second_runs())
    a2 = spawn("a", "--echo-rate", "40", bind=a.endpoint)
    listed = run_cli(zmqllm_env, "runs", "--json", "--connect", a2.endpoint)
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["state"], r["tasks_done"]) for r in json.loads(listed.stdout)] == [
        (run_id, "interrupted", 1)]
    resumed = run_cli(zmqllm_env, "run", "--resume", run_id, "--json", "--connect", a2.endpoint)
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert events[0]["type"] == "run" and events[0]["resumed"] and events[0]["from_journal"] == ["first"]
    assert _started(events) == ["second"]  # "first" came from the journal
    final = events[-1]
    assert final["type"] == "done" and [t["key"] for t in final["tasks"]] == ["first", "second"]
    assert final["tasks"][0].get("from_journal") and not final["tasks"][1].get("from_journal")
    assert final["output"].startswith("second first go")
    again = run_cli(zmqllm_env, "run", "--resume", run_id, "--json", "--connect", a2.endpoint)
    assert json.loads(again.stdout.splitlines()[-1])["output"] == final["output"]  # done: the same answer


def test_cancelling_a_run_stops_its_running_steps(mesh: list[Any]) -> None:
    a = mesh[0]

    async def run() -> list[dict[str, Any]]:
        events = []
        async with AsyncClient(a.endpoint, timeout=10) as client:
            spec = ENSEMBLE.replace("max_tokens = 48", "max_tokens = 100000")
            async for event in client.run(spec, "forever", source="ensemble.toml", run_id="to-cancel"):
                events.append(event)
                if event["type"] == "progress":
                    await client.cancel_run("to-cancel")
        return events

    events = asyncio.run(run())
    final = events[-1]
    assert final["type"] == "done" and final["finish_reason"] == "cancelled" and final["state"] == "cancelled"

    def idle() -> bool:
        for node in mesh:
            with node.client() as client:
                if client.status()["tasks"]["running"]:
                    return False
        return True

    wait_until(idle, 5, what="every node idle")


def test_bad_specs_and_unknown_runs_get_one_clear_error(mesh: list[Any], zmqllm_env: Any, tmp_path: Path) -> None:
    endpoint = mesh[0].endpoint
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nname = "a"\nprompt = "{nope}"\n')
    result = run_cli(zmqllm_env, "run", str(bad), "--input", "x", "--connect", endpoint)
    assert result.returncode == 2 and "step 'a'" in result.stderr and "{nope}" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    checked = run_cli(zmqllm_env, "workflows", "validate", str(bad), *map(str, (REPO / "configs/workflows").glob("*.toml")))
    assert checked.returncode == 2 and checked.stdout.count("ok ") == 3 and "bad.toml" in checked.stderr
    with pytest.raises(RequestFailed) as refused:
        _collect(endpoint, "[[steps]]\nname = 'a'\nprompt = 'x'\nfan_out = 2\n", "x")
    assert refused.value.code == "bad_request" and "merge" in refused.value.message
    unknown = run_cli(zmqllm_env, "run", "--resume", "nope", "--connect", endpoint)
    assert unknown.returncode == 1 and "no run 'nope'" in unknown.stderr
    both = run_cli(zmqllm_env, "run", str(bad), "--resume", "x", "--connect", endpoint)
    assert both.returncode == 2 and "one of" in both.stderr


def test_run_prints_progress_on_stderr_and_the_output_on_stdout(mesh: list[Any], zmqllm_env: Any) -> None:
    spec = REPO / "configs" / "workflows" / "ensemble.toml"
    result = run_cli(zmqllm_env, "run", str(spec), "--input", "Which planet?", "--connect", mesh[0].endpoint)
    assert result.returncode == 0, result.stderr
    assert "Q: What is the capital of Italy?" in result.stdout and "> answer#1 on" not in result.stdout
    assert "> answer#1 on" in result.stderr and "done: 3 tasks" in result.stderr


def test_a_client_going_away_leaves_the_run_going(mesh: list[Any], zmqllm_env: Any) -> None:
    a = mesh[0]

    async def leave_early() -> None:
        async with AsyncClient(a.endpoint, timeout=10) as client:
            async for event in client.run(TWO_STEPS, "go", source="two.toml", run_id="orphan"):
                if event["type"] == "task":
                    return

    asyncio.run(leave_early())
    attached = run_cli(zmqllm_env, "run", "--attach", "orphan", "--json", "--connect", a.endpoint)
    assert attached.returncode == 0, attached.stderr
    final = json.loads(attached.stdout.splitlines()[-1])
    assert final["type"] == "done" and [t["key"] for t in final["tasks"]] == ["first", "second"]


def test_distinct_peers_is_a_preference_when_branches_outnumber_nodes(spawn: Any) -> None:
    a = spawn("a", "--echo-rate", "40")
    spawn("b", "--peer", a.endpoint, "--echo-rate", "40")
    wait_until(lambda: len(states(a)) == 2, 5, what="mesh")
    final = _collect(a.endpoint, ENSEMBLE, "Which planet?", source="ensemble.toml")[-1]
    assert final["type"] == "done" and final["state"] == "done", final
    assert {t["executed_by"] for t in final["tasks"]} == {"a", "b"} and len(final["tasks"]) == 3  # 2 + 1

"""Nothing vanishes: the origin's SQLite journal, across a SIGKILL of the origin."""

from __future__ import annotations

import asyncio
import json

from conftest import run_cli, states, wait_until

from zmqllm.client import AsyncClient
from zmqllm.journal import Journal
from zmqllm.tasks import OriginTask, TaskSpec


def test_journal_records_tasks_and_interrupts_the_unfinished(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    done = OriginTask(TaskSpec("t1", "hello", 5, {}), 0.0)
    journal.accepted(done)
    done.assign("n1", "b", "echo")
    done.accept_token(0, "hello ", [0])
    done.finish({"finish_reason": "length", "usage": {}, "timings": {}, "executed_by": "b", "executed_on": ["b"]})
    journal.finished(done)
    running = OriginTask(TaskSpec("t2", "x", 5, {}), 0.0)
    journal.accepted(running)
    running.assign("n1", "c", "echo")
    running.accept_token(0, "x ", [0])
    journal.progress(running, 0)
    running.accept_token(1, "y ", [1])
    running.accept_token(2, "z ", [2])
    journal.progress(running, 1)  # only what the last checkpoint did not save
    assert journal.result("t2")["text"] == "x y z " and journal.result("t2")["tokens"] == 3
    journal.close()

    reopened = Journal(tmp_path / "j.sqlite3")
    assert reopened.interrupt_unfinished("a") == 1
    rows = {r["task_id"]: r for r in reopened.rows()}
    assert rows["t1"]["state"] == "done" and rows["t1"]["finish_reason"] == "length"
    assert rows["t2"]["state"] == "failed" and "interrupted" in rows["t2"]["error"]["message"]
    assert reopened.result("t2")["text"] == "x y z "
    chunks, final_type, final = reopened.replay("t1")
    assert chunks == [("hello ", [0])] and final_type == "DONE" and final["text"] == "hello "
    assert reopened.replay("t2")[1] == "ERROR" and reopened.result("nope") is None


def test_sigkilled_origin_accounts_for_every_task_after_restart(spawn, zmqllm_env):
    a = spawn("a", "--echo-rate", "20")
    spawn("b", "--peer", a.endpoint, "--echo-rate", "20")
    wait_until(lambda: len(states(a)) == 2, 5, what="mesh")
    ids = [f"task-{i}" for i in range(10)]

    async def submit_all() -> None:
        async with AsyncClient(a.endpoint) as client:
            streams = [client.submit("slow words here", max_tokens=400, task_id=task_id) for task_id in ids]
            for stream in streams:  # each one accepted (8 slots in the mesh: some run, some wait)
                assert (await stream.__anext__())["type"] == "accepted"
            assert (await streams[0].__anext__())["type"] == "token"
            a.kill()

    asyncio.run(submit_all())
    a2 = spawn("a", "--echo-rate", "20", bind=a.endpoint)
    result = run_cli(zmqllm_env, "tasks", "--json", "--connect", a2.endpoint)
    assert result.returncode == 0, result.stderr
    rows = {r["task_id"]: r for r in json.loads(result.stdout)}
    assert set(ids) <= set(rows)
    assert all(rows[i]["state"] == "failed" and "interrupted" in rows[i]["error"]["message"] for i in ids), {i: (rows[i]["state"], rows[i].get("error")) for i in ids}
    one = run_cli(zmqllm_env, "result", ids[0], "--json", "--connect", a2.endpoint)
    assert json.loads(one.stdout)["text"].startswith("slow ")


def test_resubmitting_a_task_id_never_runs_it_twice(spawn, zmqllm_env):
    a = spawn("a")
    b = spawn("b", "--peer", a.endpoint)
    wait_until(lambda: len(states(a)) == 2, 5, what="mesh")
    submit = ("submit", "once only", "--task-id", "same-id", "--max-tokens", "6", "--json", "--connect", a.endpoint)
    first = run_cli(zmqllm_env, *submit)
    second = run_cli(zmqllm_env, *submit)
    assert first.returncode == second.returncode == 0
    strip = [json.loads(line) for line in first.stdout.splitlines()], [json.loads(line) for line in
                                                                       second.stdout.splitlines()]
    assert [e for e in strip[0] if e["type"] != "done"] == [e for e in strip[1] if e["type"] != "done"]
    assert strip[0][-1] == strip[1][-1]
    done_counts = []
    for node in (a, b):
        with node.client() as client:
            done_counts.append(client.status()["tasks"]["done"])
    assert sum(done_counts) == 1  # one execution in the whole mesh
    # and after the origin restarts, from its journal
    a.stop()
    a2 = spawn("a", bind=a.endpoint)
    third = run_cli(zmqllm_env, *submit[:-1], a2.endpoint)
    assert [json.loads(line) for line in third.stdout.splitlines()][-1]["text"] == strip[0][-1]["text"]
    with a2.client() as client:
        assert client.status()["tasks"]["done"] == 0

"""Nothing vanishes: the origin's SQLite journal, across a SIGKILL of the origin."""

from __future__ import annotations

import asyncio
import json

from conftest import run_cli, states, wait_until

from zmqllm.client import AsyncClient
from zmqllm.node.journal import Journal
from zmqllm.core.tasks import OriginTask, TaskSpec


def test_journal_records_tasks_and_interrupts_the_unfinished(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    done = OriginTask(TaskSpec("t1", "hello", 5, {}), 0.0)
    journal.accepted(done)
    done.assign("n1", "b", "echo")
    done.accept_token(0, "hello ", [0])
    done.finish({"finish_reason": "length", "usage": {}, "timings": {}, "executed_by": "b", "executed_on": ["b"]})
    journal.finished(done, 0)
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


def _streamed_task(task_id: str, count: int, journal: Journal, every: int) -> OriginTask:
    """A task of `count` distinct tokens, checkpointed every `every` tokens as the origin does."""
    task = OriginTask(TaskSpec(task_id, "p", count, {}), 0.0)
    journal.accepted(task)
    task.assign("n1", "b", "echo")
    for seq in range(count):
        task.accept_token(seq, f"w{seq:06d} ", [seq])
        if (seq + 1) % every == 0:
            journal.progress(task, task.checkpointed)
            task.checkpointed = len(task.tokens)
    return task


def test_each_text_is_stored_once_and_a_write_costs_what_changed_not_the_whole_text(tmp_path):
    """Fails on the code before this change: the text was written three times (the task's text, its chunks,
    the final DONE), and the final write and every state change rewrote or re-read the whole text."""
    journal = Journal(tmp_path / "j.sqlite3")
    task = _streamed_task("long", 20_000, journal, every=500)  # 160 KB of text
    written: list[str] = []
    journal._db.set_trace_callback(written.append)  # the SQL as run, with its values
    task.accept_token(20_000, "tail ", [1])
    task.finish({"finish_reason": "length", "usage": {}, "timings": {}, "executed_by": "b", "executed_on": ["b"]})
    journal.finished(task, task.checkpointed)
    journal._db.set_trace_callback(None)
    assert sum(map(len, written)) < 2_000, sum(map(len, written))
    dump = "\n".join(journal._db.iterdump())
    assert dump.count("w012345 ") == 1  # one copy of the text in the whole database
    chunks, final_type, final = journal.replay("long")
    assert len(chunks) == 20_001 and chunks[12_345] == ("w012345 ", [12_345]) and chunks[-1] == ("tail ", [1])
    assert final_type == "DONE" and final["text"] == task.text() and journal.result("long")["text"] == task.text()


def test_a_journal_from_before_texts_were_stored_once_is_read_the_same(tmp_path):
    """Journals written by earlier versions (text in three places, an `output` table) are upgraded on open."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "j.sqlite3")
    db.executescript("""
        CREATE TABLE tasks (task_id TEXT PRIMARY KEY, created REAL NOT NULL, updated REAL NOT NULL,
            state TEXT NOT NULL, model TEXT, executor TEXT, executed_on TEXT NOT NULL DEFAULT '[]',
            spec TEXT NOT NULL, tokens INTEGER NOT NULL DEFAULT 0, text TEXT NOT NULL DEFAULT '', chunks TEXT,
            final_type TEXT, final TEXT);
        CREATE TABLE output (task_id TEXT NOT NULL, seq INTEGER NOT NULL, text TEXT NOT NULL,
            PRIMARY KEY (task_id, seq));
    """)
    final = {"task_id": "old", "finish_reason": "length", "text": "a b ", "executed_on": ["b"]}
    db.execute("INSERT INTO tasks VALUES ('old', 1, 2, 'done', 'echo', 'b', '[\"b\"]', '{}', 2, 'a b ', ?, "
               "'DONE', ?)", (json.dumps([["a ", [0]], ["b ", [1]]]), json.dumps(final)))
    db.execute("INSERT INTO tasks (task_id, created, updated, state, spec, tokens) VALUES ('cut', 3, 3, "
               "'streaming', '{}', 2)")
    db.executemany("INSERT INTO output VALUES ('cut', ?, ?)", [(0, "x "), (1, "y ")])
    db.commit()
    db.close()

    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.replay("old") == ([("a ", [0]), ("b ", [1])], "DONE", final)
    assert journal.interrupt_unfinished("a") == 1
    assert journal.result("cut")["text"] == "x y " and journal.result("old")["text"] == "a b "
    assert "\n".join(journal._db.iterdump()).count("a b ") == 1  # the old copies are gone

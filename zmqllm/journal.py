"""The durable record of the tasks a node accepted (SQLite, WAL). Nothing else touches the database.

Every task a node accepts as origin is written before ACCEPTED is sent, its
executor and progress as they change (progress at most every
`CHECKPOINT_INTERVAL_S`, as rows of the `output` table holding only the text
produced since the last checkpoint, so a long stream costs the same per
checkpoint as a short one), and its one final DONE or ERROR with every chunk
it delivered (the output rows are then folded into the task's row). A node killed mid-task finds its unfinished tasks at the next start
and marks them interrupted: none vanishes. WAL with synchronous=NORMAL survives
the process dying at any moment (not a power cut, which costs the last commits).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zmqllm.tasks import OriginTask

CHECKPOINT_INTERVAL_S = 0.5
"""How often the text of streaming tasks is saved (a crash loses at most this much progress)."""
LIST_LIMIT = 1000
"""Most rows `zmqllm tasks` returns (newest first)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id     TEXT PRIMARY KEY,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    state       TEXT NOT NULL,
    model       TEXT,
    executor    TEXT,
    executed_on TEXT NOT NULL DEFAULT '[]',
    spec        TEXT NOT NULL,
    tokens      INTEGER NOT NULL DEFAULT 0,
    text        TEXT NOT NULL DEFAULT '',
    chunks      TEXT,
    final_type  TEXT,
    final       TEXT
);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created);
CREATE TABLE IF NOT EXISTS runs (
    run_id   TEXT PRIMARY KEY,
    created  REAL NOT NULL,
    updated  REAL NOT NULL,
    state    TEXT NOT NULL,
    workflow TEXT NOT NULL,
    source   TEXT NOT NULL,
    spec     TEXT NOT NULL,
    input    TEXT NOT NULL,
    output   TEXT,
    error    TEXT,
    final    TEXT
);
CREATE TABLE IF NOT EXISTS run_tasks (
    run_id TEXT NOT NULL,
    key    TEXT NOT NULL,
    record TEXT NOT NULL,
    text   TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS output (
    task_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    text    TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
"""


class Journal:
    """One node's task journal at `path`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- writing ---------------------------------------------------------------------

    def accepted(self, task: OriginTask) -> None:
        spec = task.spec
        body = {"prompt": spec.prompt, "max_tokens": spec.max_tokens, "params": spec.params, "stop": list(spec.stop),
                "model": spec.model, "peer": spec.peer, "messages": list(spec.messages), "failover": spec.failover}
        now = time.time()
        self._db.execute("INSERT OR IGNORE INTO tasks (task_id, created, updated, state, spec) VALUES (?, ?, ?, ?, ?)",
                         (task.task_id, now, now, task.state, json.dumps(body)))

    def progress(self, task: OriginTask, saved: int) -> None:
        """Executor, state, and the text of the tokens after the first `saved` (already on disk)."""
        with self._transaction():
            self._db.execute(
                "UPDATE tasks SET updated = ?, state = ?, model = ?, executor = ?, executed_on = ?, tokens = ? "
                "WHERE task_id = ?",
                (time.time(), task.state, task.model, task.executor_name, json.dumps(task.executed_on),
                 len(task.tokens), task.task_id))
            if saved < len(task.tokens):
                self._db.execute("INSERT OR REPLACE INTO output (task_id, seq, text) VALUES (?, ?, ?)",
                                 (task.task_id, saved, "".join(text for text, _ in task.tokens[saved:])))

    def finished(self, task: OriginTask) -> None:
        """The final message, and every chunk, so a resent SUBMIT streams the same again."""
        with self._transaction():
            self._db.execute(
                "UPDATE tasks SET updated = ?, state = ?, model = ?, executor = ?, executed_on = ?, tokens = ?, "
                "text = ?, chunks = ?, final_type = ?, final = ? WHERE task_id = ?",
                (time.time(), task.state, task.model, task.executor_name, json.dumps(task.executed_on),
                 len(task.tokens), task.text(), json.dumps(task.tokens), task.final_type, json.dumps(task.final),
                 task.task_id))
            self._db.execute("DELETE FROM output WHERE task_id = ?", (task.task_id,))

    def interrupt_unfinished(self, origin: str) -> int:
        """At start: tasks the last run of this node left unfinished end as failed.
        Returns how many."""
        rows = self._db.execute("SELECT task_id, tokens FROM tasks WHERE final_type IS NULL").fetchall()
        for task_id, tokens in rows:
            error = {"task_id": task_id, "code": "internal", "retryable": True,
                     "message": f"interrupted: origin {origin} stopped or crashed after {tokens} tokens"}
            with self._transaction():
                self._db.execute("UPDATE tasks SET updated = ?, state = 'failed', text = ?, final_type = 'ERROR', "
                                 "final = ? WHERE task_id = ?",
                                 (time.time(), self._output(task_id), json.dumps(error), task_id))
                self._db.execute("DELETE FROM output WHERE task_id = ?", (task_id,))
        return len(rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _output(self, task_id: str) -> str:
        """The checkpointed text of an unfinished task."""
        rows = self._db.execute("SELECT text FROM output WHERE task_id = ? ORDER BY seq", (task_id,))
        return "".join(text for (text,) in rows)

    # -- workflow runs (this node orchestrating) -------------------------------------------

    def run_started(self, run_id: str, workflow: str, source: str, spec: str, input: str) -> None:
        now = time.time()
        self._db.execute("INSERT INTO runs (run_id, created, updated, state, workflow, source, spec, input) "
                         "VALUES (?, ?, ?, 'running', ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                         "state = 'running', updated = excluded.updated",
                         (run_id, now, now, workflow, source, spec, input))

    def run_task_done(self, run_id: str, key: str, text: str, record: dict[str, Any]) -> None:
        """One finished task of a run: what `--resume` does not run again."""
        self._db.execute("INSERT OR REPLACE INTO run_tasks (run_id, key, record, text) VALUES (?, ?, ?, ?)",
                         (run_id, key, json.dumps(record), text))

    def run_finished(self, run_id: str, state: str, final: dict[str, Any]) -> None:
        self._db.execute("UPDATE runs SET updated = ?, state = ?, output = ?, error = ?, final = ? WHERE run_id = ?",
                         (time.time(), state, final.get("output"), final.get("message"), json.dumps(final), run_id))

    def interrupt_runs(self) -> int:
        """At start: runs the last run of this node left going can be resumed, never silently lost."""
        return self._db.execute("UPDATE runs SET state = 'interrupted', updated = ? WHERE state = 'running'",
                                (time.time(),)).rowcount

    def run_rows(self, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
        """Newest first: what `zmqllm runs` lists."""
        cursor = self._db.execute(
            "SELECT r.run_id, r.workflow, r.state, r.created, r.updated, r.error, "
            "(SELECT COUNT(*) FROM run_tasks t WHERE t.run_id = r.run_id) FROM runs r ORDER BY created DESC LIMIT ?",
            (limit,))
        return [{"run_id": run_id, "workflow": workflow, "state": state, "created": round(created, 3),
                 "elapsed_s": round(updated - created, 3), "tasks_done": done, "error": error}
                for run_id, workflow, state, created, updated, error, done in cursor]

    def run(self, run_id: str) -> dict[str, Any] | None:
        """A run's spec, input, state, final record, and its finished tasks by key."""
        found = self._db.execute("SELECT state, workflow, source, spec, input, final FROM runs WHERE run_id = ?",
                                 (run_id,)).fetchone()
        if found is None:
            return None
        state, workflow, source, spec, input, final = found
        tasks = {key: (text, json.loads(record)) for key, text, record in self._db.execute(
            "SELECT key, text, record FROM run_tasks WHERE run_id = ?", (run_id,))}
        return {"state": state, "workflow": workflow, "source": source, "spec": spec, "input": input,
                "final": json.loads(final) if final else None, "tasks": tasks}

    # -- reading ------------------------------------------------------------------------

    def rows(self, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
        """Newest first: what `zmqllm tasks` lists."""
        cursor = self._db.execute(
            "SELECT task_id, created, updated, state, model, executor, executed_on, tokens, final_type, final "
            "FROM tasks ORDER BY created DESC LIMIT ?", (limit,))
        return [_row(*values) for values in cursor]

    def result(self, task_id: str) -> dict[str, Any] | None:
        """One task with its text and final message; None if unknown."""
        found = self._db.execute(
            "SELECT task_id, created, updated, state, model, executor, executed_on, tokens, final_type, final, text "
            "FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if found is None:
            return None
        row = _row(*found[:-1])
        row["text"] = found[-1] if found[8] is not None else self._output(task_id)
        return row

    def replay(self, task_id: str) -> tuple[list[tuple[str, list[int]]], str, dict[str, Any]] | None:
        """A finished task's chunks and final message, for a resent SUBMIT."""
        found = self._db.execute("SELECT chunks, final_type, final FROM tasks WHERE task_id = ? AND final_type "
                                 "IS NOT NULL", (task_id,)).fetchone()
        if found is None:
            return None
        chunks, final_type, final = found
        return [tuple(c) for c in json.loads(chunks or "[]")], final_type, json.loads(final)


def _row(task_id: str, created: float, updated: float, state: str, model: str | None, executor: str | None,
         executed_on: str, tokens: int, final_type: str | None, final: str | None) -> dict[str, Any]:
    ending = json.loads(final) if final else {}
    row: dict[str, Any] = {
        "task_id": task_id,
        "state": state,
        "model": model,
        "executor": executor,
        "executed_on": json.loads(executed_on),
        "tokens": tokens,
        "created": round(created, 3),
        "elapsed_s": round(updated - created, 3),
    }
    if final_type == "DONE":
        row["finish_reason"] = ending.get("finish_reason")
    elif final_type == "ERROR":
        row["error"] = {"code": ending.get("code"), "message": ending.get("message")}
    return row

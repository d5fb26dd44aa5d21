"""The durable record of the tasks a node accepted (SQLite, WAL). Nothing else touches the database.

Every task a node accepts as origin is written before ACCEPTED is sent; its
executor and state as they change; its output as it streams (at most every
`CHECKPOINT_INTERVAL_S`, and at its end), appended as `segments` rows holding
only the tokens produced since the last save; and its one final DONE or ERROR.
Each text is stored once, in the segments: a task's final DONE is stored
without its text, which is joined from them when read. So every write costs
the size of what changed, never the size of the whole text, however long the
stream. A node killed mid-task finds its unfinished tasks at the next start and
marks them interrupted: none vanishes. WAL with synchronous=NORMAL survives the
process dying at any moment (not a power cut, which costs the last commits).

Finished tasks and runs are pruned by `Retention` (age and size), oldest first.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from zmqllm.core.tasks import OriginTask

CHECKPOINT_INTERVAL_S = 0.5
"""How often the text of streaming tasks is saved (a crash loses at most this much progress)."""
LIST_LIMIT = 1000
"""Most rows `zmqllm tasks` returns (newest first)."""
DEFAULT_KEEP_DAYS = 30.0
"""Finished tasks and runs older than this many days are pruned (config `journal_keep_days`)."""
DEFAULT_MAX_MB = 1024.0
"""Above this many MiB of live data the oldest finished tasks and runs are pruned (config `journal_max_mb`)."""
SECONDS_PER_DAY = 86_400.0
PRUNE_TO_FRACTION = 0.9
"""Size pruning goes this far below `max_mb`, so it runs now and then rather than after every task."""
WAL_LIMIT_BYTES = 8 * 2**20
"""The write-ahead log is truncated back to this size after each checkpoint of it (SQLite's
journal_size_limit); without it, the -wal file keeps its largest size for good."""
SCHEMA_VERSION = 1
"""1: texts once, in `segments` (0 kept each text in `tasks.text`, `tasks.chunks` and the final DONE)."""

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
    final_type  TEXT,
    final       TEXT
);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created);
CREATE TABLE IF NOT EXISTS segments (
    task_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    text    TEXT NOT NULL,
    splits  BLOB NOT NULL,
    PRIMARY KEY (task_id, seq)
);
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
"""

Chunks = list[tuple[str, list[int]]]
JOURNAL_ERRORS = (sqlite3.Error, OSError)
"""What a journal call raises when the disk is full, the file unwritable or the database damaged."""


JOURNAL_FILE = "journal.sqlite3"
"""The journal's file name in a node's data dir."""


@dataclass(frozen=True)
class Retention:
    """How long finished tasks and runs are kept: 0 turns a limit off. Unfinished ones are never pruned."""

    keep_days: float = DEFAULT_KEEP_DAYS
    max_mb: float = DEFAULT_MAX_MB


class Journal:
    """One node's task journal at `path`."""

    def __init__(self, path: Path, retention: Retention = Retention()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention = retention
        self.writes = 0
        """Records written (a task accepted, its progress, its end; a run's start, steps, end): for /metrics."""
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._db.executescript(_SCHEMA)
        if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            with self._transaction():
                _upgrade_from_v0(self._db)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    # -- writing ---------------------------------------------------------------------

    def accepted(self, task: OriginTask) -> None:
        self.writes += 1
        spec = task.spec
        body = {"prompt": spec.prompt, "max_tokens": spec.max_tokens, "params": spec.params, "stop": list(spec.stop),
                "model": spec.model, "peer": spec.peer, "messages": list(spec.messages), "failover": spec.failover}
        now = time.time()
        self._db.execute("INSERT OR IGNORE INTO tasks (task_id, created, updated, state, spec) VALUES (?, ?, ?, ?, ?)",
                         (task.task_id, now, now, task.state, json.dumps(body)))

    def progress(self, task: OriginTask, saved: int) -> None:
        """Executor, state, and the tokens after the first `saved` (already on disk), appended."""
        self.writes += 1
        with self._transaction():
            self._update(task)
            self._append(task, saved)

    def finished(self, task: OriginTask, saved: int) -> None:
        """The final message (a DONE without its text, which the segments hold) and the tokens after the
        first `saved`: what a resent SUBMIT streams again."""
        self.writes += 1
        final = {k: v for k, v in (task.final or {}).items() if k != "text"}
        with self._transaction():
            self._update(task, ", final_type = ?, final = ?", (task.final_type, json.dumps(final)))
            self._append(task, saved)

    def _update(self, task: OriginTask, more: str = "", values: tuple[Any, ...] = ()) -> None:
        self._db.execute(
            f"UPDATE tasks SET updated = ?, state = ?, model = ?, executor = ?, executed_on = ?, tokens = ?{more} "
            "WHERE task_id = ?",
            (time.time(), task.state, task.model, task.executor_name, json.dumps(task.executed_on), len(task.tokens),
             *values, task.task_id))

    def _append(self, task: OriginTask, saved: int) -> None:
        if saved < len(task.tokens):
            _insert_segment(self._db, task.task_id, saved, task.tokens[saved:])

    def interrupt_unfinished(self, origin: str) -> int:
        """At start: tasks the last run of this node left unfinished end as failed.
        Returns how many."""
        rows = self._db.execute("SELECT task_id, tokens FROM tasks WHERE final_type IS NULL").fetchall()
        with self._transaction():
            for task_id, tokens in rows:
                error = {"task_id": task_id, "code": "internal", "retryable": True,
                         "message": f"interrupted: origin {origin} stopped or crashed after {tokens} tokens"}
                self._db.execute("UPDATE tasks SET updated = ?, state = 'failed', final_type = 'ERROR', final = ? "
                                 "WHERE task_id = ?", (time.time(), json.dumps(error), task_id))
        return len(rows)

    def forget(self, task_id: str) -> None:
        """Drop one finished task (a client reopened it: it is journaled again as a new task)."""
        self.writes += 1
        with self._transaction():
            self._db.execute("DELETE FROM segments WHERE task_id = ?", (task_id,))
            self._db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))

    def prune(self, now: float | None = None) -> list[str]:
        """Delete finished tasks and runs beyond the retention (older than `keep_days`, and the oldest while
        the live data exceeds `max_mb`). Returns the task ids deleted. `now` is wall-clock seconds."""
        now = time.time() if now is None else now
        cutoff = now - self.retention.keep_days * SECONDS_PER_DAY if self.retention.keep_days > 0 else float("-inf")
        cutoff = max(cutoff, self._size_cutoff())
        if cutoff == float("-inf"):
            return []
        with self._transaction():
            ids = [task_id for (task_id,) in self._db.execute(
                "SELECT task_id FROM tasks WHERE created <= ? AND final_type IS NOT NULL", (cutoff,))]
            self._db.executemany("DELETE FROM segments WHERE task_id = ?", [(task_id,) for task_id in ids])
            self._db.execute("DELETE FROM tasks WHERE created <= ? AND final_type IS NOT NULL", (cutoff,))
            self._db.execute("DELETE FROM run_tasks WHERE run_id IN (SELECT run_id FROM runs WHERE updated <= ? "
                             "AND state != 'running')", (cutoff,))
            self._db.execute("DELETE FROM runs WHERE updated <= ? AND state != 'running'", (cutoff,))
        return ids

    def _size_cutoff(self) -> float:
        """The creation time up to which the oldest finished tasks must go to bring the live data to
        PRUNE_TO_FRACTION of `max_mb` (-inf when under the limit), estimated from the mean row size."""
        limit = self.retention.max_mb * 2**20
        live = self.live_bytes()
        if limit <= 0 or live <= limit:
            return float("-inf")
        rows = self._db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        excess = int(rows * (1 - limit * PRUNE_TO_FRACTION / live)) + 1
        found = self._db.execute("SELECT created FROM tasks WHERE final_type IS NOT NULL ORDER BY created "
                                 "LIMIT 1 OFFSET ?", (excess - 1,)).fetchone()
        if found is None:  # fewer finished tasks than that: all of them
            found = self._db.execute("SELECT MAX(created) FROM tasks WHERE final_type IS NOT NULL").fetchone()
        return float("-inf") if found[0] is None else float(found[0])

    def live_bytes(self) -> int:
        """Bytes of the database in use (its pages less the free ones that new rows reuse)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0] - self._db.execute(
            "PRAGMA freelist_count").fetchone()[0]
        return int(pages * self._db.execute("PRAGMA page_size").fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- workflow runs (this node orchestrating) -------------------------------------------

    def run_started(self, run_id: str, workflow: str, source: str, spec: str, input: str) -> None:
        self.writes += 1
        now = time.time()
        self._db.execute("INSERT INTO runs (run_id, created, updated, state, workflow, source, spec, input) "
                         "VALUES (?, ?, ?, 'running', ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                         "state = 'running', updated = excluded.updated",
                         (run_id, now, now, workflow, source, spec, input))

    def run_task_done(self, run_id: str, key: str, text: str, record: dict[str, Any]) -> None:
        """One finished task of a run: what `--resume` does not run again."""
        self.writes += 1
        self._db.execute("INSERT OR REPLACE INTO run_tasks (run_id, key, record, text) VALUES (?, ?, ?, ?)",
                         (run_id, key, json.dumps(record), text))

    def run_finished(self, run_id: str, state: str, final: dict[str, Any]) -> None:
        self.writes += 1
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
        """One task with its text (as far as it got) and final message; None if unknown."""
        found = self._db.execute(
            "SELECT task_id, created, updated, state, model, executor, executed_on, tokens, final_type, final "
            "FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if found is None:
            return None
        row = _row(*found)
        row["text"] = "".join(text for (text,) in self._db.execute(
            "SELECT text FROM segments WHERE task_id = ? ORDER BY seq", (task_id,)))
        return row

    def replay(self, task_id: str) -> tuple[Chunks, str, dict[str, Any]] | None:
        """A finished task's chunks and final message (a DONE with its text), for a resent SUBMIT."""
        found = self._db.execute("SELECT final_type, final FROM tasks WHERE task_id = ? AND final_type IS NOT NULL",
                                 (task_id,)).fetchone()
        if found is None:
            return None
        final_type, final_text = found
        final = json.loads(final_text)
        chunks: Chunks = []
        for text, splits in self._db.execute("SELECT text, splits FROM segments WHERE task_id = ? ORDER BY seq",
                                             (task_id,)):
            at = 0
            for length, ids in msgpack.unpackb(splits):
                chunks.append((text[at:at + length], list(ids)))
                at += length
        if final_type == "DONE":
            final["text"] = "".join(text for text, _ in chunks)
        return chunks, final_type, final


def _insert_segment(db: sqlite3.Connection, task_id: str, seq: int, chunks: Chunks) -> None:
    """Tokens `seq`, `seq` + 1, ... of a task: their text joined, and each one's length and ids."""
    splits = msgpack.packb([[len(text), ids] for text, ids in chunks])
    db.execute("INSERT OR REPLACE INTO segments (task_id, seq, text, splits) VALUES (?, ?, ?, ?)",
               (task_id, seq, "".join(text for text, _ in chunks), splits))


def _upgrade_from_v0(db: sqlite3.Connection) -> None:
    """A journal written before texts were stored once: its chunks and checkpointed texts become segments
    (a checkpointed text without its token ids as one chunk), and the old copies are emptied."""
    columns = {name for _, name, *_ in db.execute("PRAGMA table_info(tasks)")}
    if "chunks" not in columns:
        return  # a new journal
    rows = db.execute("SELECT task_id, text, chunks FROM tasks WHERE chunks IS NOT NULL OR text != ''").fetchall()
    for task_id, text, chunks in rows:
        pairs = [(t, list(ids)) for t, ids in json.loads(chunks)] if chunks else [(text, [])]
        _insert_segment(db, task_id, 0, pairs)
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'output'").fetchone():
        for task_id, seq, text in db.execute("SELECT task_id, seq, text FROM output").fetchall():
            _insert_segment(db, task_id, seq, [(text, [])])
        db.execute("DROP TABLE output")
    db.execute("UPDATE tasks SET text = '', chunks = NULL")
    for task_id, final in db.execute("SELECT task_id, final FROM tasks WHERE final_type = 'DONE'").fetchall():
        db.execute("UPDATE tasks SET final = ? WHERE task_id = ?",
                   (json.dumps({k: v for k, v in json.loads(final).items() if k != "text"}), task_id))


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

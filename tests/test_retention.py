"""Memory and disk that stay flat: the journal's retention, and a daemon running 10,000 tasks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from zmqllm.client import AsyncClient
from zmqllm.core.tasks import OriginTask, TaskSpec
from zmqllm.node.journal import SECONDS_PER_DAY, Journal, Retention

DONE = {"finish_reason": "length", "usage": {}, "timings": {}, "executed_by": "b", "executed_on": ["b"]}
DAEMON_TASKS = 10_000
IN_FLIGHT = 50
"""Tasks a test client keeps going at once (within a daemon's default slots and queue)."""
GROWTH_ALLOWED = 0.2
"""What RSS and the journal may grow between the half-way mark and the end."""


def _finish(journal: Journal, task_id: str, words: int = 8) -> None:
    task = OriginTask(TaskSpec(task_id, "p", words, {}), 0.0)
    journal.accepted(task)
    task.assign("n1", "b", "echo")
    for seq in range(words):
        task.accept_token(seq, f"{task_id}-word{seq} ", [seq])
    task.finish(DONE)
    journal.finished(task, 0)


def _disk_bytes(path: Path) -> int:
    """The database and its write-ahead log."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def test_finished_tasks_and_runs_older_than_keep_days_are_pruned_and_unfinished_ones_kept(tmp_path):
    """Fails on the code before this change: the journal was never pruned."""
    journal = Journal(tmp_path / "j.sqlite3", Retention(keep_days=1, max_mb=0))
    for task_id in ("old-1", "old-2"):
        _finish(journal, task_id)
    journal.accepted(OriginTask(TaskSpec("running", "p", 5, {}), 0.0))
    journal.run_started("r-done", "w", "src", "spec", "in")
    journal.run_finished("r-done", "done", {"output": "x"})
    journal.run_started("r-going", "w", "src", "spec", "in")
    assert journal.prune() == []  # nothing is a day old yet
    assert sorted(journal.prune(time.time() + 2 * SECONDS_PER_DAY)) == ["old-1", "old-2"]
    assert [row["task_id"] for row in journal.rows()] == ["running"]
    assert journal.replay("old-1") is None and journal.result("old-2") is None
    assert [row["run_id"] for row in journal.run_rows()] == ["r-going"]
    assert journal._db.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 0


def test_the_journal_stays_under_its_size_limit_and_its_file_stops_growing(tmp_path):
    """Fails on the code before this change: the journal grew by every task, for good."""
    path = tmp_path / "j.sqlite3"
    journal = Journal(path, Retention(keep_days=0, max_mb=0.25))
    sizes = []
    for i in range(6_000):
        _finish(journal, f"t{i:05d}")
        if i % 100 == 99:
            journal.prune()
        if i + 1 in (3_000, 6_000):
            sizes.append(_disk_bytes(path))
    assert journal.live_bytes() <= 0.25 * 2**20 * 1.1
    assert sizes[1] <= sizes[0] * (1 + GROWTH_ALLOWED), sizes
    newest = journal.rows(limit=1)[0]["task_id"]
    assert newest == "t05999" and journal.replay(newest)[2]["text"].startswith("t05999-word0 ")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_ten_thousand_tasks_leave_the_daemons_memory_and_journal_flat(spawn, tmp_path):
    """Fails on the code before this change: the journal grew by every task (nothing pruned it, and each
    text was stored three times). Memory: finished tasks no longer keep their tokens (the journal replays
    them) and a deadline's timer goes with its task."""
    data_dir = tmp_path / "data"
    a = spawn("a", "--echo-rate", "0", "--data-dir", str(data_dir), "--journal-max-mb", "1")
    journal = data_dir / "journal.sqlite3"
    marks: dict[int, tuple[int, int]] = {}

    async def run_all() -> None:
        async with AsyncClient(a.endpoint, timeout=30) as client:
            async def one(i: int) -> None:
                async for event in client.submit(f"task {i} has six short words", max_tokens=6, deadline_s=3600,
                                                  task_id=f"t{i}"):
                    assert event["type"] in ("accepted", "token", "done"), event

            for start in range(0, DAEMON_TASKS, IN_FLIGHT):
                await asyncio.gather(*(one(i) for i in range(start, start + IN_FLIGHT)))
                done = start + IN_FLIGHT
                if done % (DAEMON_TASKS // 2) == 0:
                    marks[done] = (_rss_bytes(a.proc.pid), _disk_bytes(journal))

    asyncio.run(run_all())
    (rss_half, disk_half), (rss_end, disk_end) = marks[DAEMON_TASKS // 2], marks[DAEMON_TASKS]
    assert rss_end <= rss_half * (1 + GROWTH_ALLOWED), (rss_half, rss_end)
    assert disk_end <= disk_half * (1 + GROWTH_ALLOWED), (disk_half, disk_end)

"""One daemon per data dir: the second is refused before it touches the first's journal."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from conftest import STOP_TIMEOUT_S, run_cli

from zmqllm.client import AsyncClient
from zmqllm.node.datadir import DataDirInUse, DataDirLock


def test_a_locked_data_dir_is_refused_naming_its_owner_until_released(tmp_path):
    first = DataDirLock.acquire(tmp_path / "d")
    with pytest.raises(DataDirInUse) as refused:
        DataDirLock.acquire(tmp_path / "d")  # a second open file: refused even within one process
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and str(tmp_path / "d") in message and "\n" not in message
    first.release()
    first.release()  # idempotent
    DataDirLock.acquire(tmp_path / "d").release()


def test_a_second_daemon_on_a_data_dir_exits_2_naming_the_first_and_leaves_its_tasks_alone(spawn, zmqllm_env,
                                                                                          tmp_path):
    """Fails on the code before this change: the second daemon started on the same journal, marking the
    first's running task `interrupted` (and then served beside it)."""
    data_dir = str(tmp_path / "shared")
    a = spawn("a", "--echo-rate", "50", "--data-dir", data_dir)

    async def scenario() -> list[dict]:
        async with AsyncClient(a.endpoint) as client:
            stream = client.submit("slow words", max_tokens=25, task_id="running")
            events = [await stream.__anext__(), await stream.__anext__()]
            assert [e["type"] for e in events] == ["accepted", "token"]
            b = spawn("b", "--data-dir", data_dir, wait=False)  # another name, the same directory
            await asyncio.to_thread(b.proc.wait, STOP_TIMEOUT_S)
            assert b.proc.returncode == 2, b.log()
            lines = [line for line in b.log_lines if f"pid {a.proc.pid}" in line]
            assert len(lines) == 1 and data_dir in lines[0], b.log()
            return events + [event async for event in stream]

    events = asyncio.run(scenario())
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "length", events[-1]
    listed = run_cli(zmqllm_env, "tasks", "--json", "--connect", a.endpoint)
    rows = {row["task_id"]: row for row in json.loads(listed.stdout)}
    assert rows["running"]["state"] == "done", rows


def test_the_lock_goes_with_its_process(spawn, tmp_path):
    """A SIGKILLed daemon leaves no stale lock: the next one on its data dir starts."""
    data_dir = str(tmp_path / "d")
    a = spawn("a", "--data-dir", data_dir)
    a.kill()
    b = spawn("a", "--data-dir", data_dir)
    assert b.proc.poll() is None

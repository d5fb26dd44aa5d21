"""The origin and its journal, in-process: a real node's origin and executor (echo engine), no sockets.

The node is built but not run: its outbox is a recorder, and its peer table holds only itself, so every task
runs here. Journals that fail are real journals with one method that raises, as a full disk would.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from zmqllm.core import protocol
from zmqllm.core.membership import Identity, PeerTable
from zmqllm.core.protocol import Message
from zmqllm.core.tasks import OriginTask, TaskSpec
from zmqllm.engines.echo import EchoEngine
from zmqllm.net.transport import Sent
from zmqllm.node.journal import Journal
from zmqllm.node.node import Node, NodeSettings

CLIENT = b"client-test"
WAIT_S = 5.0
"""Longest a test waits for a task's ending (an echo task at full speed takes milliseconds)."""


class Outbox:
    """Stands in for the node's Mailer: records what the node sends, decoded."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Message]] = []

    def post(self, identity: bytes, payload: bytes, final: bool = False) -> None:
        self.sent.extend((identity, message) for message in protocol.decode_frame(payload))

    def task(self, task_id: str) -> list[Message]:
        return [m for _, m in self.sent if m.get("task_id") == task_id]


class FullDisk(Journal):
    """A journal whose named methods fail as on a full disk."""

    def __init__(self, path: Path, failing: tuple[str, ...]) -> None:
        super().__init__(path)
        self.failing = failing

    def accepted(self, task: OriginTask) -> None:
        self._maybe_fail("accepted")
        super().accepted(task)

    def finished(self, task: OriginTask, saved: int) -> None:
        self._maybe_fail("finished")
        super().finished(task, saved)

    def _maybe_fail(self, method: str) -> None:
        if method in self.failing:
            raise sqlite3.OperationalError("database or disk is full")


@contextmanager
def origin_node(journal: Journal | None) -> Iterator[Node]:
    node = Node(NodeSettings(name="a", bind="tcp://127.0.0.1:0"), EchoEngine(rate=0, slots=2))
    node.mailer = Outbox()  # type: ignore[assignment]
    node.table = PeerTable(Identity(node.node_id, "a", "tcp://127.0.0.1:1", node.engine.models, node.engine.slots),
                           node.settings.liveness, node.clock())
    node.journal = journal
    try:
        yield node
    finally:
        node.ctx.term()
        if journal is not None:
            journal.close()


def submit(node: Node, task_id: str, words: int = 5, **fields: Any) -> None:
    message = protocol.make("SUBMIT", src="client-test", id=1, task_id=task_id, prompt="one two three four five",
                            max_tokens=words, params={}, stop=[], **fields)
    node.origin.on_submit(CLIENT, message)


async def ending(node: Node, task_id: str) -> Message:
    """The task's DONE or ERROR, once the node sent it."""
    outbox: Outbox = node.mailer  # type: ignore[assignment]
    async with asyncio.timeout(WAIT_S):
        while True:
            final = [m for m in outbox.task(task_id) if m.type in ("DONE", "ERROR")]
            if final:
                return final[0]
            await asyncio.sleep(0.001)


def test_a_journal_that_refuses_a_task_answers_the_client_and_keeps_nothing(tmp_path):
    """Fails on the code before this change: the task was remembered before the journal raised, so it stayed
    accepted but never routed (a resubmit attached to it and waited for ever)."""
    async def scenario() -> None:
        with origin_node(FullDisk(tmp_path / "j.sqlite3", ("accepted",))) as node:
            submit(node, "t1")
            error = await ending(node, "t1")
            assert error.type == "ERROR" and error["code"] == "internal" and error["retryable"]
            assert "cannot journal task t1" in error["message"] and "disk is full" in error["message"]
            assert [m.type for m in node.mailer.task("t1")] == ["ERROR"]  # no ACCEPTED before it
            assert node.origin.tasks == {} and node.origin.in_flight() == 0 and node.executor.active == 0
            spec = TaskSpec("step-1", "one two", 2, {})
            assert "cannot journal" in node.origin.submit_local(spec, lambda kind, fields: None)
            node.journal.failing = ()  # the disk has room again: the same id runs
            node.mailer.sent.clear()
            submit(node, "t1")
            assert (await ending(node, "t1")).type == "DONE"

    asyncio.run(scenario())


def test_a_journal_that_fails_at_the_end_still_gives_the_client_its_done(tmp_path, caplog):
    """Fails on the code before this change: the journal's error escaped before DONE was sent, so the client
    never heard the end of its task."""
    async def scenario() -> None:
        with origin_node(FullDisk(tmp_path / "j.sqlite3", ("finished",))) as node:
            submit(node, "t1", words=3)
            done = await ending(node, "t1")
            assert done.type == "DONE" and done["text"] == "one two three "
            assert node.origin.tasks["t1"].tokens  # not in the journal, so kept in memory

    with caplog.at_level(logging.ERROR, logger="zmqllm.node.origin"):
        asyncio.run(scenario())
    assert any("t1" in r.getMessage() and "disk is full" in r.getMessage() for r in caplog.records)


def test_a_finished_tasks_deadline_timer_goes_with_it(tmp_path):
    """Fails on the code before this change: the deadline's timer stayed armed after the task ended, holding
    the task and its tokens for up to the deadline (7 days at most)."""
    async def scenario() -> None:
        with origin_node(None) as node:
            submit(node, "t1", deadline_s=3600.0)
            task = weakref.ref(node.origin.tasks["t1"])
            assert (await ending(node, "t1")).type == "DONE"
            node.origin.tasks.clear()  # as when it is forgotten among the oldest
            gc.collect()
            assert task() is None

    asyncio.run(scenario())


def test_finished_tasks_leave_their_tokens_to_the_journal_and_a_resubmit_gets_them_back(tmp_path):
    """Fails on the code before this change: each of the 1,024 finished tasks an origin remembers kept every
    token and its whole text in memory, though the journal could replay them."""
    async def scenario() -> None:
        with origin_node(Journal(tmp_path / "j.sqlite3")) as node:
            for i in range(3):
                submit(node, f"t{i}", words=40)
            first = [await ending(node, f"t{i}") for i in range(3)]
            for task in node.origin.tasks.values():
                assert task.finished and task.tokens == [] and "text" not in task.final
            tokens = [m for m in node.mailer.task("t1") if m.type == "TOKEN"]
            node.mailer.sent.clear()
            submit(node, "t1", words=40)
            again = node.mailer.task("t1")
            assert [m.type for m in again] == ["ACCEPTED"] + ["TOKEN"] * 40 + ["DONE"]
            assert [(m["seq"], m["text"], m["ids"]) for m in again[1:-1]] == [
                (m["seq"], m["text"], m["ids"]) for m in tokens]
            assert again[-1].fields == first[1].fields
            assert node.executor.completed == 3  # never run twice

    asyncio.run(scenario())


@pytest.mark.parametrize("reply", ["connection lost", "peer_dead error", "reject"])
def test_a_cancelled_task_whose_executor_is_lost_ends_cancelled_not_elsewhere(reply):
    """Fails on the code before this change: a cancel sent to the executor, then the executor lost (or
    stopping, or refusing it) before it confirmed, moved the task to another node, which ran it on."""
    async def scenario() -> None:
        with origin_node(None) as node:
            task = OriginTask(TaskSpec("t1", "one two", 50, {}), node.clock())
            node.origin.tasks["t1"] = task
            node.origin.clients["t1"] = [CLIENT]
            task.assign("peer-b", "b", "echo")  # running on a peer...
            task.accept_token(0, "one ", [0])
            sent: list[tuple[str, str]] = []
            node.send_to_peer = lambda node_id, type_, **fields: sent.append((node_id, type_)) or Sent.OK
            node.origin.on_cancel(CLIENT, protocol.make("CANCEL", src="client-test", id=2, task_id="t1"))
            assert sent == [("peer-b", "CANCEL")] and not task.finished
            if reply == "connection lost":
                node.origin.executor_lost("peer-b", "b", "unreachable (connection closed)")
            elif reply == "peer_dead error":
                node.origin.on_executor_message(protocol.make(
                    "ERROR", src="peer-b", id=3, task_id="t1", code="peer_dead", message="b: node stopping",
                    retryable=True))
            else:
                node.origin.on_executor_message(protocol.make(
                    "REJECT", src="peer-b", id=3, task_id="t1", code="busy", message="b is busy"))
            done = await ending(node, "t1")
            assert done.type == "DONE" and done["finish_reason"] == "cancelled" and done["text"] == "one "
            assert node.executor.completed == 0 and node.executor.active == 0  # not moved here

    asyncio.run(scenario())


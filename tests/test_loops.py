"""Background loops survive a failing round, and a loop that cannot go on stops the node with a clear error.

Before the fix a round's exception ended its loop silently: one journal error stopped checkpointing (or
dead-peer detection) for good while the daemon looked healthy.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from zmqllm.engines.echo import EchoEngine
from zmqllm.node import loops
from zmqllm.node.node import FatalNodeError, Node, NodeSettings

WAIT_S = 10.0


async def test_a_failing_round_is_logged_once_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []
    done = asyncio.Event()

    def round_() -> float:
        rounds.append(len(rounds))
        if len(rounds) <= 5:
            raise OSError("disk I/O error")
        if len(rounds) == 8:
            done.set()
        return 0.0

    given_up: list[str] = []
    with caplog.at_level(logging.INFO, logger="zmqllm.node.loops"):
        task = asyncio.create_task(loops.guarded("test", round_, given_up.append, lambda: 0.0, retry_s=0.0))
        await asyncio.wait_for(done.wait(), WAIT_S)
        task.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "the test loop failed" in errors[0].getMessage()
    assert any("works again after 5 failure(s)" in r.getMessage() for r in caplog.records)
    assert given_up == []


async def test_a_loop_failing_for_give_up_s_gives_up_with_a_clear_reason() -> None:
    now = [0.0]

    def round_() -> float:
        now[0] += 1.0  # each failing round takes a second of the fake clock
        raise RuntimeError("journal is gone")

    given_up: list[str] = []
    await asyncio.wait_for(loops.guarded("journal checkpoint", round_, given_up.append, lambda: now[0], 0.0), WAIT_S)
    assert len(given_up) == 1
    assert "journal checkpoint loop failed without a break" in given_up[0] and "journal is gone" in given_up[0]
    assert now[0] >= loops.GIVE_UP_S


async def test_a_nodes_checkpoint_loop_survives_a_journal_error(tmp_path: Path) -> None:
    """A real node (in process): its checkpoint round raises twice, then works; it keeps checkpointing."""
    node = Node(NodeSettings(name="a", bind="tcp://127.0.0.1:0", data_dir=tmp_path / "a"), EchoEngine())
    calls: list[int] = []
    three = asyncio.Event()
    real_checkpoint = node.origin.checkpoint

    def flaky_checkpoint() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise OSError("database is locked")
        if len(calls) >= 4:
            three.set()
        real_checkpoint()

    node.origin.checkpoint = flaky_checkpoint  # type: ignore[method-assign]
    running = asyncio.create_task(node.run())
    try:
        await asyncio.wait_for(three.wait(), WAIT_S)
        assert not running.done()
    finally:
        node.stop()
        await asyncio.wait_for(running, WAIT_S)


async def test_a_node_whose_loop_cannot_go_on_stops_with_the_reason(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loops, "GIVE_UP_S", 0.3)
    node = Node(NodeSettings(name="a", bind="tcp://127.0.0.1:0", data_dir=tmp_path / "a"), EchoEngine())

    def broken_checkpoint() -> None:
        raise OSError("disk full")

    node.origin.checkpoint = broken_checkpoint  # type: ignore[method-assign]
    with pytest.raises(FatalNodeError, match="journal checkpoint loop failed.*disk full"):
        await asyncio.wait_for(node.run(), WAIT_S)

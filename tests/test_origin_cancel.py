"""A cancel that races the executor's death, on real daemons: the task ends cancelled, never revived."""

from __future__ import annotations

import asyncio
import signal

from conftest import states, wait_until

from zmqllm.client import AsyncClient

TOKENS = 60
"""Long enough to be running at the cancel (60 tokens at 20 tokens/s: 3 s), short enough that a revived
task would finish within the test."""


def test_a_cancel_then_the_executors_death_ends_the_task_cancelled_not_on_another_node(spawn):
    """Fails on the code before this change: the origin failed the cancelled task over to c, which ran it
    to its end (`length`)."""
    a = spawn("a", "--echo-rate", "20")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "20")
    c = spawn("c", "--peer", a.endpoint, "--echo-rate", "20")
    wait_until(lambda: list(states(a).values()) == ["alive"] * 3, 5, what="mesh")

    async def run() -> list[dict]:
        events = []
        async with AsyncClient(a.endpoint, timeout=10) as client:
            async for event in client.submit("cancel me now", peer="b", max_tokens=TOKENS, task_id="t1"):
                events.append(event)
                if event["type"] == "token" and event["seq"] == 2:
                    b.proc.send_signal(signal.SIGSTOP)  # b cannot confirm the cancel...
                    await client.cancel("t1")
                    await client.status()  # a answers in order: the cancel is on its way to b
                    b.kill()  # ...and dies before it does
        return events

    try:
        events = asyncio.run(run())
    finally:
        b.kill()
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "cancelled", events[-1]
    assert not [e for e in events if e["type"] == "failover"], events
    assert len([e for e in events if e["type"] == "token"]) < TOKENS
    for node in (a, c):
        with node.client() as client:
            assert client.status()["tasks"]["done"] == 0, node.name  # it ran nowhere else

"""TokenHandoff and StepOutbox: chunks from a worker thread reach `emit` on the
event loop in order, a step's worth at a time, and never after the result."""

from __future__ import annotations

import asyncio
import threading

from zmqllm.engines.base import TokenChunk
from zmqllm.engines.handoff import StepOutbox, TokenHandoff


def test_a_steps_chunks_arrive_together_in_order_and_before_the_result() -> None:
    seen: list[str] = []
    wakeups = 0

    async def go() -> str:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counted(*args):  # type: ignore[no-untyped-def]
            nonlocal wakeups
            wakeups += 1
            return real(*args)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        outbox = StepOutbox()
        handoffs = [TokenHandoff(loop, lambda c, k=k: seen.append(f"{k}:{c.text}"), threading.Event(), outbox)
                    for k in "ab"]
        done: asyncio.Future[str] = loop.create_future()

        def worker() -> None:
            for step in range(3):
                for h in handoffs:
                    h.deliver(TokenChunk(str(step), (step,)))
                if step == 2:
                    outbox.post(loop, done.set_result, "result")
                outbox.flush()

        thread = threading.Thread(target=worker)
        thread.start()
        result = await asyncio.wait_for(done, 10)
        thread.join(10)
        return result

    assert asyncio.run(go()) == "result"
    assert seen == ["a:0", "b:0", "a:1", "b:1", "a:2", "b:2"]
    assert wakeups == 3  # one per flush, not one per chunk


def test_nothing_crosses_before_flush_and_a_closed_loop_aborts_the_generation() -> None:
    loop = asyncio.new_event_loop()
    seen: list[TokenChunk] = []
    outbox = StepOutbox()
    handoff = TokenHandoff(loop, seen.append, threading.Event(), outbox)
    handoff.deliver(TokenChunk("x", (1,)))
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [] and not handoff.stopped()
    loop.close()
    outbox.flush()
    assert handoff.stopped()  # the worker stops generating for a loop that is gone

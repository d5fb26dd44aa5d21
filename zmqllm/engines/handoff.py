"""Tokens from an engine's worker thread to the event loop, for both llama engines.

The worker calls `deliver` per chunk; each chunk runs the request's `emit` on
the loop, in order (`call_soon_threadsafe` is FIFO). An `emit` that raises, or
an awaiting task that went away, sets `abort`, which the worker polls through
`stopped` to end the generation within one token.

A worker that produces many chunks at once (one per sequence of a batched
decode step) gathers them in a `StepOutbox` and hands them over with one
`call_soon_threadsafe`: one self-pipe write and one loop wake-up per step
instead of one per token (at 8 streams that write was 1.5 % of the worker's
time, and each wake-up takes CPU from llama.cpp's threads).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from zmqllm.engines.base import Emit, TokenChunk

log = logging.getLogger(__name__)

Call = tuple[Callable[[Any], None], Any, Callable[[], None] | None]
"""A call for the loop: function, argument, and what to do instead when the loop is closed."""


class StepOutbox:
    """Calls for event loops, gathered by one worker thread and handed over
    together at `flush`, in the order they were posted. Only the worker thread
    posts and flushes; it must flush before it waits or stops."""

    def __init__(self) -> None:
        self._calls: dict[asyncio.AbstractEventLoop, list[Call]] = {}

    def post(self, loop: asyncio.AbstractEventLoop, fn: Callable[[Any], None], arg: Any,
             on_closed: Callable[[], None] | None = None) -> None:
        self._calls.setdefault(loop, []).append((fn, arg, on_closed))

    def flush(self) -> None:
        calls, self._calls = self._calls, {}
        for loop, batch in calls.items():
            try:
                loop.call_soon_threadsafe(_run_all, batch)
            except RuntimeError:  # loop closed: nobody is waiting there any more
                for _, _, on_closed in batch:
                    if on_closed is not None:
                        on_closed()


def _run_all(batch: list[Call]) -> None:
    for fn, arg, _ in batch:
        try:
            fn(arg)
        except Exception:  # one failing call must not drop the others (their requests would hang)
            log.exception("a call handed over from an engine worker failed")


class TokenHandoff:
    """One generation's path from the worker thread to `emit` on `loop`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, emit: Emit, cancel: threading.Event,
                 outbox: StepOutbox | None = None) -> None:
        self.loop = loop
        self.outbox = outbox
        self.emit = emit
        self.cancel = cancel
        self.abort = threading.Event()  # the awaiting task went away, or emit failed
        self.errors: list[BaseException] = []

    def stopped(self) -> bool:
        """Whether the worker should stop (any thread)."""
        return self.cancel.is_set() or self.abort.is_set()

    def deliver(self, chunk: TokenChunk) -> None:
        """Worker thread: hand one chunk to the loop (at the outbox's next flush, if any)."""
        if self.outbox is not None:
            self.outbox.post(self.loop, self._on_loop, chunk, self.abort.set)
            return
        try:
            self.loop.call_soon_threadsafe(self._on_loop, chunk)
        except RuntimeError:  # loop closed
            self.abort.set()

    def raise_emit_error(self) -> None:
        """On the loop, once the outcome has arrived (after every chunk delivered before it): re-raise what
        `emit` raised, if anything."""
        if self.errors:
            raise self.errors[0]

    def _on_loop(self, chunk: TokenChunk) -> None:
        if self.abort.is_set():
            return
        try:
            self.emit(chunk)
        except BaseException as exc:  # stop generating, re-raise in raise_emit_error
            self.errors.append(exc)
            self.abort.set()

"""Tokens from an engine's worker thread to the event loop, for both llama engines.

The worker calls `deliver` per chunk; each chunk runs the request's `emit` on
the loop, in order (`call_soon_threadsafe` is FIFO). An `emit` that raises, or
an awaiting task that went away, sets `abort`, which the worker polls through
`stopped` to end the generation within one token.
"""

from __future__ import annotations

import asyncio
import threading

from zmqllm.engines.base import Emit, TokenChunk


class TokenHandoff:
    """One generation's path from the worker thread to `emit` on `loop`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, emit: Emit, cancel: threading.Event) -> None:
        self.loop = loop
        self.emit = emit
        self.cancel = cancel
        self.abort = threading.Event()  # the awaiting task went away, or emit failed
        self.errors: list[BaseException] = []

    def stopped(self) -> bool:
        """Whether the worker should stop (any thread)."""
        return self.cancel.is_set() or self.abort.is_set()

    def deliver(self, chunk: TokenChunk) -> None:
        """Worker thread: hand one chunk to the loop."""
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

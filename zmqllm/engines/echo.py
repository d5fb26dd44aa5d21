"""The echo engine: streams the prompt's words back at a set rate, no weights.

It exists so the mesh can be tested and benchmarked on its own: output is fully
determined by the prompt and `max_tokens` (each word with its following space,
cycled), and the rate makes timing-dependent behaviour (cancel, failover,
backpressure) reproducible.
"""

from __future__ import annotations

import asyncio
import threading
import time

from zmqllm.core.chat import last_user_text
from zmqllm.engines.base import Emit, Engine, EngineError, GenerationRequest, GenerationResult, TokenChunk

ECHO_MODEL = "echo"
_YIELD_EVERY = 64
"""At an unlimited rate, hand the loop back every this many tokens so heartbeats run."""


def echo_tokens(prompt: str) -> list[str]:
    """The words of `prompt`, each with its following space (the last one too)."""
    return [word + " " for word in prompt.split()]


class EchoEngine(Engine):
    """Serves the model "echo". `rate` is tokens per second; 0 means unlimited."""

    def __init__(self, rate: float = 50.0, slots: int = 4) -> None:
        self.models = (ECHO_MODEL,)
        self.chat = True  # it echoes the last user message
        self.slots = slots
        self.rate = rate

    async def generate(self, request: GenerationRequest, emit: Emit, cancel: threading.Event) -> GenerationResult:
        words = echo_tokens(last_user_text(request.messages) if request.messages else request.prompt)
        if not words:
            raise EngineError("bad_request", "the echo engine needs a prompt with at least one word")
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        start = time.monotonic()
        first = emitted = len(request.resume_ids)  # echo output depends only on the position
        while emitted < request.max_tokens:
            if cancel.is_set():
                return GenerationResult("cancelled", len(words), emitted - first)
            if interval:
                delay = start + (emitted - first) * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if cancel.is_set():
                        return GenerationResult("cancelled", len(words), emitted - first)
            elif emitted % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            emit(TokenChunk(words[emitted % len(words)], (emitted % len(words),)))
            emitted += 1
        return GenerationResult("length", len(words), emitted - first)

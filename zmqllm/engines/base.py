"""The engine interface: text in, tokens out, cancel.

Engines know nothing of sockets, peers or the event loop's other work. The daemon
calls `Engine.generate` once per task in its own asyncio task; an engine that
blocks (llama.cpp) does its work in a worker thread and hands tokens back through
`emit`, which is safe to call from any thread only via the loop (see
`zmqllm.node.executor`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Self

from zmqllm.core.generation import (  # noqa: F401  (engines and their callers use them from here)
    SAMPLING_KEYS,
    EngineError,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    TokenChunk,
)

Emit = Callable[[TokenChunk], None]


class Engine(ABC):
    """A model server for one daemon.

    `models` are the names this engine answers to; `slots` is how many requests
    it runs at once (the daemon queues the rest).
    """

    models: tuple[str, ...]
    slots: int
    ctx: int = 0
    """Context tokens per request; 0 = no limit (echo)."""
    chat: bool = False
    """Whether chat requests can be served (a chat template is known)."""

    @abstractmethod
    async def generate(
        self, request: GenerationRequest, emit: Emit, cancel: threading.Event
    ) -> GenerationResult:
        """Stream tokens of `request` through `emit` (always on the event loop's
        thread) until done, `max_tokens`, or `cancel` is set; a set `cancel` must
        end the generation within one token and return `finish_reason="cancelled"`.
        Raises `EngineError` for requests it cannot serve."""

    @classmethod
    async def open(cls, **settings: Any) -> Self:
        """Construct with `settings` and load; a failed load closes what it opened before raising."""
        engine = cls(**settings)
        try:
            await engine.load()
        except BaseException:
            await engine.close()
            raise
        return engine

    def loaded_models(self) -> tuple[str, ...]:
        """The models loaded now, ready to answer without a cold load (all of them, for an engine of one)."""
        return self.models

    def prefix_capacity(self, model: str) -> int:
        """How many recent prompts of `model` this engine keeps cached for reuse (0: none); the node
        advertises that many prompts' prefixes so the mesh routes a conversation's next turn here."""
        return 0

    def loading_models(self) -> tuple[str, ...]:
        """The models being loaded now (requests for them wait)."""
        return ()

    async def load(self) -> None:
        """Get ready to serve (load weights); raises `EngineError` with one clear
        line when it cannot. The default has nothing to load."""

    def token_counter(self) -> Callable[[str], int] | None:
        """How this engine's model counts the tokens of a text (workflow splits by
        `chunk_tokens` use it), or None when it has no tokenizer. The counter may
        be called on the event loop while generations run."""
        return None

    async def close(self) -> None:
        """Release the model; the default holds nothing."""

"""The engine interface: text in, tokens out, cancel.

Engines know nothing of sockets, peers or the event loop's other work. The daemon
calls `Engine.generate` once per task in its own asyncio task; an engine that
blocks (llama.cpp) does its work in a worker thread and hands tokens back through
`emit`, which is safe to call from any thread only via the loop (see
`zmqllm.executor`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

FinishReason = Literal["stop", "length", "cancelled"]

SAMPLING_KEYS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "repeat_penalty": float,
    "seed": int,
}
"""Sampling parameters a request may carry, with their types. `stop` (a list of
strings) is carried separately in `GenerationRequest.stop`."""


class EngineError(Exception):
    """A request the engine cannot serve (bad parameters, model failure).

    `code` is one of the protocol's error codes (`bad_request`, `engine_failed`).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class GenerationRequest:
    """One completion request as the engine sees it."""

    prompt: str
    max_tokens: int
    params: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    messages: tuple[dict[str, str], ...] = ()
    """A chat request: the engine renders these with its chat template (and
    `prompt` is empty). See `zmqllm.chat`."""
    resume_ids: tuple[int, ...] = ()
    """Token ids another node already delivered (failover): the engine continues
    after them, emitting only new tokens; `max_tokens` counts them too."""


@dataclass(frozen=True)
class TokenChunk:
    """One streamed piece of output: its text and the token ids behind it."""

    text: str
    ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    """How a generation ended and what it cost (`completion_tokens`: new tokens
    only, not the replayed `resume_ids`)."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


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

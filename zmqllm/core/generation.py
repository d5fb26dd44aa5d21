"""What a generation is asked and what it answers: values shared by the node's task logic and the engines. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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
    `prompt` is empty). See `zmqllm.core.chat`."""
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

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


@dataclass(frozen=True)
class Range:
    """The values a sampling parameter may take: from `low` (excluded when `low_open`) up to `high`."""

    low: float
    high: float | None = None
    low_open: bool = False
    note: str = ""

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        rule = (f"in [{self.low:g}, {self.high:g}]" if self.high is not None else
                f"{'>' if self.low_open else '>='} {self.low:g}")
        return f"{rule} ({self.note})" if self.note else rule


SAMPLING_RANGES: dict[str, Range] = {
    "temperature": Range(0.0),
    "top_p": Range(0.0, 1.0),
    "top_k": Range(0, note="0 = no limit"),
    "min_p": Range(0.0, 1.0),
    "repeat_penalty": Range(0.0, low_open=True),
}
"""What the engines accept; the command line's options take their ranges from here too."""


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
    model: str = ""
    """The model the origin resolved the task to; an engine serving several (`ModelHost`) picks by it."""


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
    cached_tokens: int = 0
    """Prompt tokens not computed again: a cache held them from an earlier request."""

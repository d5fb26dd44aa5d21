"""Task settings: how a task is generated (model, tokens, sampling, stop) and retried.

Kept apart from the spec parser because the same keys appear at four levels
(`[defaults]`, a step, a loop stage, an llm merge's `[merge_settings]`), each
layered over the one above, and the daemon reads them back as a task's params.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zmqllm.workflow.values import Where

__all__ = ["TaskSettings", "SAMPLING_RULES", "SETTINGS_KEYS", "parse_settings",
           "DEFAULT_MAX_TOKENS", "DEFAULT_RETRIES", "MAX_RETRIES", "MAX_SEED"]

MAX_RETRIES = 10
DEFAULT_MAX_TOKENS = 64
DEFAULT_RETRIES = 1
MAX_SEED = 2**32 - 2  # 2**32 - 1 means "random" to llama.cpp

SAMPLING_RULES: dict[str, tuple[type, float, float | None, str]] = {
    "temperature": (float, 0.0, None, ">= 0"),
    "top_p": (float, 0.0, 1.0, "in [0, 1]"),
    "top_k": (int, 0, None, ">= 0 (0 = no limit)"),
    "min_p": (float, 0.0, 1.0, "in [0, 1]"),
    "repeat_penalty": (float, 0.0, None, "> 0"),
    "seed": (int, 0, MAX_SEED, f"between 0 and {MAX_SEED}"),
}
"""Sampling keys a task carries in its params: type, bounds, rule (as the engines check them)."""
SETTINGS_KEYS = ("model", "max_tokens", "stop", "retries", "peer", *SAMPLING_RULES)


@dataclass(frozen=True)
class TaskSettings:
    """How one task is generated and retried; layered defaults < step < stage or merge."""

    model: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    stop: tuple[str, ...] = ()
    retries: int = DEFAULT_RETRIES
    peer: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None

    def params(self) -> dict[str, Any]:
        """The sampling parameters that were set (the engine defaults the rest)."""
        return {key: getattr(self, key) for key in SAMPLING_RULES if getattr(self, key) is not None}


def parse_settings(at: Where, table: Mapping[str, Any], base: TaskSettings) -> TaskSettings:
    """`base` with the settings keys of `table` applied."""
    given: dict[str, Any] = {
        "model": at.string(table, "model", empty_ok=False),
        "max_tokens": at.integer(table, "max_tokens", None, 1),
        "stop": at.strings(table, "stop"),
        "retries": at.integer(table, "retries", None, 0, MAX_RETRIES),
        "peer": at.string(table, "peer", empty_ok=False),
    }
    for key, (kind, low, high, rule) in SAMPLING_RULES.items():
        if kind is int:
            given[key] = at.integer(table, key, None, int(low), None if high is None else int(high), rule)
        else:
            given[key] = at.number(table, key, low, high, rule, low_open=key == "repeat_penalty")
    return dataclasses.replace(base, **{key: value for key, value in given.items() if key in table})

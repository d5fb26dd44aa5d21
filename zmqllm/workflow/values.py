"""Typed reads of TOML values, each failure one line naming the file, place and key.

Shared by the spec parser for the top level, `[defaults]`, steps, stages and
merge settings, so every table reports a bad value the same way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from zmqllm.core.show import show_value

__all__ = ["WorkflowError", "Where", "show", "suggest"]


class WorkflowError(Exception):
    """A bad workflow spec or a failed load; the message is one line starting with the source."""


def show(value: Any) -> str:
    """A bad value, briefly, on one line, with its TOML type word ("a table", "an array" read better here)."""
    shown = show_value(value)
    return {"table": "a table", "array": "an array"}.get(shown, shown)


def suggest(name: str, known: Collection[str], quote: str = "'") -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if not close:
        return ""
    left, right = ("{", "}") if quote == "{" else (quote, quote)
    return f" (did you mean {left}{close[0]}{right}?)"


@dataclass(frozen=True)
class Where:
    """A place in a spec file: the source and, say, "step 'draft'" or "[defaults]"."""

    source: str
    place: str = ""

    def error(self, key: str | None, message: str) -> WorkflowError:
        parts = [self.source, self.place, f"key '{key}'" if key else ""]
        return WorkflowError(": ".join(part for part in parts if part) + ": " + message)

    def inside(self, place: str) -> Where:
        return Where(self.source, f"{self.place} {place}".strip())

    def check_keys(self, table: Mapping[str, Any], known: Collection[str]) -> None:
        for key in table:
            if key not in known:
                raise self.error(None, f"unknown key '{key}'{suggest(key, known)}")

    def string(self, table: Mapping[str, Any], key: str, default: str | None = None, *,
               required: bool = False, empty_ok: bool = True) -> str | None:
        if key not in table:
            if required:
                raise self.error(key, "required")
            return default
        value = table[key]
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {show(value)}")
        if not empty_ok and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def integer(self, table: Mapping[str, Any], key: str, default: int | None, low: int,
                high: int | None = None, rule: str | None = None) -> int | None:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {show(value)}")
        if value < low or (high is not None and value > high):
            wanted = rule or (f"between {low} and {high}" if high is not None else f">= {low}")
            raise self.error(key, f"must be {wanted}, got {show(value)}")
        return value

    def number(self, table: Mapping[str, Any], key: str, low: float, high: float | None,
               rule: str, low_open: bool = False) -> float | None:
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, got {show(value)}")
        value = float(value)
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise self.error(key, f"must be {rule}, got {show(value)}")
        return value

    def boolean(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be a boolean (true or false), got {show(value)}")
        return value

    def strings(self, table: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self.error(key, f"must be a list of non-empty strings, got {show(value)}")
        return tuple(value)

    def table(self, table: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = table.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a table, got {show(value)}")
        return value

    def tables(self, table: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            raise self.error(key, f"must be an array of tables ([[{key}]]), got {show(value)}")
        return value

"""Checking the fields of a request body, the same way for every API: a field of the wrong type or range is a
400 naming it (`messages[2].content`, `options.temperature`), an absent or null one is None. Pure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from zmqllm.core.generation import SAMPLING_KEYS, SAMPLING_RANGES, Range
from zmqllm.core.validation import MAX_STOPS, MAX_STOP_CHARS
from zmqllm.http.errors import ApiError, bad

MAX_SEED = 2**63 - 1
"""The largest seed a task carries (msgpack's signed 64 bits)."""
_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
          list: "a list"}


def typed(value: Any, name: str, typ: type) -> Any:
    """`value` when of type `typ` (an int passes for a number; a boolean is no number), None when absent."""
    if value is None:
        return None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ in (int, float) and isinstance(value, bool)):
        raise bad(name, f"{name} must be {_WORDS[typ]}, got {json.dumps(value)[:40]}")
    if typ is float and not math.isfinite(value):
        raise bad(name, f"{name} must be a finite number")
    return value


def body_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def sampling(values: Mapping[str, Any], prefix: str = "", limits: Mapping[str, Range] | None = None,
             keys: Mapping[str, type] = SAMPLING_KEYS) -> dict[str, Any]:
    """The sampling parameters among `values` (`keys`: those an API defines), checked against what the
    engines accept and, where the API is stricter (OpenAI's temperature stops at 2, Anthropic's at 1),
    against `limits` too. A negative seed means "random" (llama.cpp, Ollama): left out."""
    params: dict[str, Any] = {}
    for key, typ in keys.items():
        name = prefix + key
        value = typed(values.get(key), name, typ)
        if value is None or (key == "seed" and value < 0):
            continue
        for allowed in (SAMPLING_RANGES.get(key), (limits or {}).get(key)):
            if allowed is not None and not allowed.holds(value):
                raise bad(name, f"{name} must be {allowed}, got {value}")
        if key == "seed" and value > MAX_SEED:
            raise bad(name, f"{name} must be at most {MAX_SEED}, got {value}")
        params[key] = value
    return params


def stops(value: Any, name: str, one_string: bool = True) -> tuple[str, ...]:
    """Stop sequences: a list of strings (or one string, where the API allows it), within the mesh's limits."""
    found = [value] if isinstance(value, str) and one_string else [] if value is None else value
    if not isinstance(found, list) or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in found):
        what = "a string or a list of strings" if one_string else "a list of strings"
        raise bad(name, f"{name} must be {what} of 1-{MAX_STOP_CHARS} characters")
    if len(found) > MAX_STOPS:
        raise bad(name, f"{name} may hold at most {MAX_STOPS} sequences, got {len(found)}")
    return tuple(found)

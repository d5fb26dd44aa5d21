"""Bad values shown briefly, on one line, in error messages (config and workflow errors alike). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_SHOWN_CHARS = 60  # longer bad values are cut so the error stays one readable line


def show_value(value: Any) -> str:
    """Render a bad value briefly, on one line, with its TOML type word."""
    if isinstance(value, bool):
        return "boolean " + ("true" if value else "false")
    if isinstance(value, str):
        text = value if len(value) <= MAX_SHOWN_CHARS else value[:MAX_SHOWN_CHARS] + "..."
        return "string " + repr(text)
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__

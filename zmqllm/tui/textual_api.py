"""The one place the dashboard uses Textual beyond its public API, so a Textual upgrade touches one file."""

from __future__ import annotations

from textual._time import get_time

__all__ = ["message_clock"]


def message_clock() -> float:
    """The clock Textual stamps `Message.time` with (a key press's arrival, for the key-to-screen probe)."""
    return get_time()

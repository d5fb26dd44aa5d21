"""Chat requests: checking messages and the built-in "plain" template. Pure.

A chat request is a list of `{"role", "content"}` messages; an engine turns it
into a prompt with a template: the model's own (a GGUF's Jinja chat template),
a Jinja file the config names, or "plain" below — a simple transcript a base
model (like the bundled gemma3-270m) continues sensibly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PLAIN = "plain"
ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 256

_PLAIN_SPEAKERS = {"user": "User", "assistant": "Assistant"}
PLAIN_STOPS = ("\nUser:", "\nAssistant:")
"""Where a base model, continuing the transcript, starts writing the next turn."""


def check_messages(messages: Sequence[Any]) -> str | None:
    """Why `messages` is not a valid chat, or None when it is."""
    if not messages:
        return "a chat needs at least one message"
    if len(messages) > MAX_MESSAGES:
        return f"a chat may have at most {MAX_MESSAGES} messages, got {len(messages)}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return f"message {i} must have exactly the keys 'role' and 'content'"
        if message["role"] not in ROLES:
            return f"message {i} has role {message['role']!r}; roles are {', '.join(ROLES)}"
        if not isinstance(message["content"], str):
            return f"message {i} content must be a string"
    if messages[-1]["role"] != "user":
        return "the last message of a chat must be the user's"
    return None


def render_plain(messages: Sequence[dict[str, str]]) -> str:
    """The "plain" template: system text first, then `User:` / `Assistant:` turns,
    ending with `Assistant:` for the model to continue."""
    system = "\n".join(m["content"].strip() for m in messages if m["role"] == "system")
    turns = "".join(f"{_PLAIN_SPEAKERS[m['role']]}: {m['content'].strip()}\n"
                    for m in messages if m["role"] != "system")
    return (system + "\n\n" if system else "") + turns + "Assistant:"


def last_user_text(messages: Sequence[dict[str, str]]) -> str:
    """What the user said last (the echo engine answers with it)."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")

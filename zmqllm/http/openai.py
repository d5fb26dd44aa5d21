"""OpenAI's completions and chat completions: a request body checked into a task, and the task's tokens and
ending shaped into OpenAI's responses and stream chunks. Pure: no sockets, no clock (`created` is passed in).

Unknown fields are ignored, as OpenAI does; a known field of the wrong type or range is a 400 naming it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from zmqllm import __version__
from zmqllm.core.chat import check_messages
from zmqllm.core.tasks import TaskSpec
from zmqllm.core.generation import Range
from zmqllm.core.validation import MAX_TOKENS_LIMIT
from zmqllm.http.errors import ApiError, bad
from zmqllm.http.fields import body_object, sampling, stops, typed

Kind = Literal["completion", "chat"]
DEFAULT_MAX_TOKENS = 128
"""As `zmqllm submit`'s default, for a request that names no max_tokens."""
SYSTEM_FINGERPRINT = f"zmqllm-{__version__}"
SSE_DONE = b"data: [DONE]\n\n"
MAX_CHOICES = 16
"""Most choices (`n`) one request may ask for: each is a task on its own slot somewhere in the mesh."""

LIMITS = {"temperature": Range(0.0, 2.0)}
"""Where OpenAI's ranges are narrower than what the engines accept."""
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI's roles as a task's chat knows them (`developer` is the newer name for `system`)."""


@dataclass(frozen=True)
class Request:
    """A checked completion or chat request: what the task runs and how the reply is shaped."""

    kind: Kind
    model: str | None
    prompt: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    params: dict[str, Any]
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    choices: int = 1

    def spec(self, task_id: str, peer: str | None = None) -> TaskSpec:
        return TaskSpec(task_id, self.prompt, self.max_tokens, dict(self.params), self.stop, self.model, peer,
                        self.messages)


def parse(kind: Kind, body: Any) -> Request:
    """Check a request body; raises `ApiError` (400) naming the first parameter at fault."""
    body = body_object(body)
    model = _optional(body, "model", str)
    if kind == "chat":
        prompt, messages = "", _messages(body.get("messages"))
    else:
        prompt, messages = _prompt(body.get("prompt")), ()
    max_tokens = _optional(body, "max_completion_tokens", int) if kind == "chat" else None
    if max_tokens is None:
        max_tokens = _optional(body, "max_tokens", int)
    if max_tokens is not None and not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise bad("max_tokens", f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}")
    n = _optional(body, "n", int)
    if n is not None and not 1 <= n <= MAX_CHOICES:
        raise bad("n", f"n must be between 1 and {MAX_CHOICES}, got {n}")
    _optional(body, "user", str)
    params = sampling(body, limits=LIMITS)
    stream = bool(_optional(body, "stream", bool))
    options = _optional(body, "stream_options", dict) or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad("stream_options.include_usage", "stream_options.include_usage must be a boolean")
    return Request(kind, model, prompt, messages, max_tokens or DEFAULT_MAX_TOKENS, params, stops(body.get("stop"), "stop"),
                   stream, include_usage and stream, n or 1)


def _optional(body: dict[str, Any], name: str, typ: type) -> Any:
    return typed(body.get(name), name, typ)


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # OpenAI takes a batch of prompts; one is one task
    if not isinstance(value, str):
        raise bad("prompt", "prompt must be a string (or a list of one string; token ids and batches are not "
                            "served)")
    return value


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    """OpenAI messages as a task's chat: text parts joined, `name` dropped; tools are not served."""
    if not isinstance(value, list):
        raise bad("messages", "messages must be a list of {role, content} objects")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise bad(f"messages[{i}]", f"messages[{i}] must be an object with role one of "
                                        f"{', '.join(_ROLES)} (tools are not served)")
        out.append({"role": _ROLES[message["role"]], "content": _content(message.get("content"), i)})
    problem = check_messages(out)
    if problem is not None:
        raise bad("messages", problem)
    return tuple(out)


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise bad(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of text parts")


class Framing:
    """How one request's answer is shaped (`zmqllm.http.relay.Framing`): its id, creation time (Unix seconds),
    the model that ran it, and whether the stream carries usage (`stream_options.include_usage`)."""

    content_type = "text/event-stream"

    def __init__(self, kind: Kind, id: str, created: int, model: str, include_usage: bool = False) -> None:
        self.kind, self.id, self.created, self.model = kind, id, created, model
        self.include_usage = include_usage
        self._started: set[int] = set()

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}

    def whole(self, texts: Sequence[str], dones: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The whole answer of a request that did not stream: one choice per text."""
        choices = []
        for index, (text, done) in enumerate(zip(texts, dones)):
            reason = done.get("finish_reason", "stop")
            if self.kind == "chat":
                choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": reason})
            else:
                choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": reason})
        return {**self._envelope(False), "choices": choices, "usage": usage_of(*(d.get("usage", {}) for d in dones))}

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
        """One streamed piece (`text` None: the closing chunk carrying finish_reason). A chat's first chunk of a
        choice names the role; with include_usage every chunk has `usage: null`, as OpenAI sends it."""
        if self.kind == "chat":
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if index not in self._started:
                self._started.add(index)
                delta = {"role": "assistant", **delta}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        out = {**self._envelope(True), "choices": [choice]}
        return {**out, "usage": None} if self.include_usage else out

    def opening(self) -> bytes:
        return b""

    def token(self, index: int, text: str) -> bytes:
        return sse(self.chunk(index, text))

    def finish(self, index: int, done: dict[str, Any]) -> bytes:
        return sse(self.chunk(index, None, done.get("finish_reason", "stop")))

    def closing(self, dones: Sequence[dict[str, Any]]) -> bytes:
        """The usage chunk (no choices) when asked for, then `data: [DONE]`."""
        if not self.include_usage:
            return SSE_DONE
        usage = {**self._envelope(True), "choices": [], "usage": usage_of(*(d.get("usage", {}) for d in dones))}
        return sse(usage) + SSE_DONE

    def failure(self, error: ApiError) -> bytes:
        """Mid-stream: OpenAI's clients raise on an `error` event (and no [DONE] follows)."""
        return sse(error.body())


def usage_of(*usages: dict[str, Any]) -> dict[str, Any]:
    """Tasks' usage (CONTRACT: `done`) summed, with OpenAI's total and, where a cache held part of a prompt,
    `prompt_tokens_details.cached_tokens`."""
    prompt = sum(int(usage.get("prompt_tokens", 0)) for usage in usages)
    completion = sum(int(usage.get("completion_tokens", 0)) for usage in usages)
    cached = sum(int(usage.get("cached_tokens", 0)) for usage in usages)
    summed: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
    if cached:
        summed["prompt_tokens_details"] = {"cached_tokens": cached}
    return summed


def models_list(served: dict[str, list[str]]) -> dict[str, Any]:
    """`GET /v1/models`: every model the mesh serves, with the live nodes serving it."""
    return {"object": "list", "data": [model_entry(name, nodes) for name, nodes in sorted(served.items())]}


def model_entry(name: str, nodes: list[str]) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "zmqllm", "nodes": sorted(nodes)}


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event: `data: {json}` and a blank line."""
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

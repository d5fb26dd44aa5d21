"""Anthropic's Messages API: a `POST /v1/messages` body checked into a chat task, and the task's tokens and
ending shaped into Anthropic's message or its stream of named events. Pure but for `routes`, which hands the
checked request to the gateway (`zmqllm.http.relay.Answering`).

Unknown fields are ignored (`metadata`, `service_tier`, ...), as Anthropic does; a known field of the wrong type
or range is a 400 naming it. What the mesh cannot serve (tools, images, documents, extended thinking,
structured outputs) is a 400 naming it too, rather than an answer that silently ignored part of the request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from zmqllm.core.chat import check_messages
from zmqllm.core.tasks import TaskSpec
from zmqllm.core.generation import Range
from zmqllm.core.validation import MAX_TOKENS_LIMIT
from zmqllm.http.errors import ApiError, bad
from zmqllm.http.fields import body_object, sampling, stops, typed
from zmqllm.http.relay import Answering

PATHS: tuple[str, ...] = ("/v1/messages",)
"""Paths whose errors take this API's shape (`/v1/messages/count_tokens` is under it)."""
ID_PREFIX = "msg_"
COUNT_MAX_TOKENS = 1
"""What a token count generates: the mesh has no tokenize message, so counting runs the chat for one token."""

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
    504: "timeout_error", 529: "overloaded_error",
}
"""Anthropic's error type per status (docs: API errors); the SDK picks its exception class from the status."""
SAMPLING = {"temperature": float, "top_p": float, "top_k": int}
"""The sampling fields Anthropic defines."""
LIMITS = {"temperature": Range(0.0, 1.0)}
"""Where Anthropic's ranges are narrower than what the engines accept."""
_ROLES = ("user", "assistant")
_TOOL_CHOICES_WITHOUT_TOOLS = ("auto", "none")


@dataclass(frozen=True)
class Request:
    """A checked Messages request: the chat the task runs and whether its answer streams."""

    model: str | None
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    params: dict[str, Any]
    stop: tuple[str, ...]
    stream: bool

    @property
    def choices(self) -> int:
        return 1  # Anthropic has no `n`

    def spec(self, task_id: str, peer: str | None = None) -> TaskSpec:
        return TaskSpec(task_id, "", self.max_tokens, dict(self.params), self.stop, self.model, peer, self.messages)


def parse(body: Any) -> Request:
    """Check a `POST /v1/messages` body; raises `ApiError` (400) naming the first parameter at fault."""
    model, messages = _chat(body)
    max_tokens = _field(body, "max_tokens", int)
    if max_tokens is None:
        raise bad("max_tokens", "max_tokens: field required (Anthropic's API has no default)")
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise bad("max_tokens", f"max_tokens: must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}")
    params = sampling(body, limits=LIMITS, keys=SAMPLING)
    stream = bool(_field(body, "stream", bool))
    return Request(model, messages, max_tokens, params, stops(body.get("stop_sequences"), "stop_sequences", one_string=False), stream)


def parse_count(body: Any) -> Request:
    """Check a `POST /v1/messages/count_tokens` body (model, system, messages) into a one-token task that
    does not stream; sampling fields do not change a count and are ignored."""
    model, messages = _chat(body)
    return Request(model, messages, COUNT_MAX_TOKENS, {}, (), False)


def _chat(body: Any) -> tuple[str | None, tuple[dict[str, str], ...]]:
    """The model asked for and the task's chat: `system` first, then the turns. A body asking for what only
    tools, thinking or structured outputs could answer is refused."""
    body = body_object(body)
    model = _field(body, "model", str)
    if _field(body, "tools", list):
        raise bad("tools", "tools: tool use is not served (the mesh's engines generate text only)")
    choice = _field(body, "tool_choice", dict)
    if choice is not None and choice.get("type") not in _TOOL_CHOICES_WITHOUT_TOOLS:
        raise bad("tool_choice", "tool_choice: tool use is not served (only 'auto' and 'none' are accepted)")
    thinking = _field(body, "thinking", dict)
    if thinking is not None and thinking.get("type") != "disabled":
        raise bad("thinking", "thinking: extended thinking is not served (only {'type': 'disabled'})")
    if (_field(body, "output_config", dict) or {}).get("format") is not None:
        raise bad("output_config.format", "output_config.format: structured outputs are not served")
    system = "" if body.get("system") is None else _text(body["system"], "system")
    messages = ([{"role": "system", "content": system}] if system else []) + _messages(body.get("messages"))
    problem = check_messages(messages)
    if problem is not None:
        raise bad("messages", f"messages: {problem}")
    return model, tuple(messages)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise bad("messages", "messages: must be a list of {role, content} objects")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise bad(f"messages[{i}].role", f"messages[{i}].role: must be one of {', '.join(_ROLES)} (a "
                                             "system prompt goes in the top-level `system` field)")
        out.append({"role": message["role"], "content": _text(message.get("content"), f"messages[{i}].content")})
    return out


def _text(content: Any, where: str) -> str:
    """A string, or a list of text blocks joined (their `cache_control` and `citations` do not matter here);
    any other block is a 400 naming it."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(where, f"{where}: must be a string or a list of text blocks")
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text":
            raise bad(f"{where}[{j}]", f"{where}[{j}]: only text blocks are served, got "
                                       f"{json.dumps(kind) if isinstance(kind, str) else 'no type'}")
        if not isinstance(block.get("text"), str):
            raise bad(f"{where}[{j}].text", f"{where}[{j}].text: must be a string")
    return "".join(block["text"] for block in content)


def _field(body: dict[str, Any], name: str, typ: type) -> Any:
    return typed(body.get(name), name, typ)


def stop_reason(done: dict[str, Any]) -> tuple[str, str | None]:
    """A task's DONE as Anthropic's `stop_reason` and `stop_sequence`. A DONE does not say today which stop
    sequence ended it, so a stop is `end_turn` unless it names one (`stop_sequence`); cancelled is `end_turn`."""
    if done.get("finish_reason") == "length":
        return "max_tokens", None
    matched = done.get("stop_sequence")
    if isinstance(matched, str) and matched:
        return "stop_sequence", matched
    return "end_turn", None


def usage_of(done: dict[str, Any]) -> dict[str, int]:
    usage = done.get("usage", {})
    return {"input_tokens": int(usage.get("prompt_tokens", 0)), "output_tokens": int(usage.get("completion_tokens", 0))}


class Framing:
    """How one request's answer is shaped (`zmqllm.http.relay.Framing`): its id and the model that ran it.
    A stream is Anthropic's named events: message_start, content_block_start, one content_block_delta per
    piece of text, content_block_stop, message_delta (stop reason, usage), message_stop."""

    content_type = "text/event-stream"

    def __init__(self, id: str, model: str) -> None:
        self.id, self.model = id, model

    def message(self, text: str | None, done: dict[str, Any] | None) -> dict[str, Any]:
        """The message object: whole (`text` and `done`), or as a stream starts it (no content, no ending yet,
        usage unknown until the DONE: zeros, which message_delta's totals replace)."""
        reason, sequence = stop_reason(done) if done is not None else (None, None)
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [] if text is None else [{"type": "text", "text": text}],
                "stop_reason": reason, "stop_sequence": sequence,
                "usage": usage_of(done) if done is not None else {"input_tokens": 0, "output_tokens": 0}}

    def whole(self, texts: Sequence[str], dones: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self.message(texts[0], dones[0])

    def opening(self) -> bytes:
        return (event("message_start", message=self.message(None, None))
                + event("content_block_start", index=0, content_block={"type": "text", "text": ""}))

    def token(self, index: int, text: str) -> bytes:
        return event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})

    def finish(self, index: int, done: dict[str, Any]) -> bytes:
        return event("content_block_stop", index=0)

    def closing(self, dones: Sequence[dict[str, Any]]) -> bytes:
        """The stop reason and the usage totals (input tokens too: the stream could not know them at its
        start), then the end of the message."""
        reason, sequence = stop_reason(dones[0])
        return (event("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence},
                      usage=usage_of(dones[0]))
                + event("message_stop"))

    def failure(self, error: ApiError) -> bytes:
        """Mid-stream: the SDK raises on an `error` event (and no message_stop follows)."""
        return event("error", error=error_body(error)["error"])


class TokenCount(Framing):
    """A token count's answer: the prompt tokens its one-token task's DONE reports (it never streams)."""

    def whole(self, texts: Sequence[str], dones: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"input_tokens": usage_of(dones[0])["input_tokens"]}


def event(name: str, **fields: Any) -> bytes:
    """One server-sent event as Anthropic names it: `event: NAME` and its data, whose `type` repeats the name."""
    data = json.dumps({"type": name, **fields}, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


def error_type(status: int) -> str:
    """Anthropic's error type for a status: its own list, else the 4xx or 5xx catch-all."""
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(error: ApiError) -> dict[str, Any]:
    """Anthropic's error shape (its SDK raises BadRequestError, NotFoundError, ... from the status)."""
    return {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}


def routes(gateway: Answering) -> list[web.RouteDef]:
    """`POST /v1/messages` and `POST /v1/messages/count_tokens`: tasks of this node like any other (journaled,
    listed, cancelled when the client leaves), so a count is visible in `zmqllm tasks` as a one-token task."""

    async def messages(request: web.Request) -> web.StreamResponse:
        parsed = parse(await gateway.body(request))
        return await gateway.answer(request, parsed, lambda id_, _created, model: Framing(id_, model), ID_PREFIX)

    async def count_tokens(request: web.Request) -> web.StreamResponse:
        parsed = parse_count(await gateway.body(request))
        return await gateway.answer(request, parsed, lambda id_, _created, model: TokenCount(id_, model),
                                    ID_PREFIX)

    return [web.post("/v1/messages", messages), web.post("/v1/messages/count_tokens", count_tokens)]

"""Ollama's API (`/api/generate`, `/api/chat`, `/api/tags`, ...) over the mesh, so Ollama's clients and the tools
built on them (`ollama` for Python, Open WebUI, editors' plugins) use the mesh as if it were one Ollama server.

Pure, as `openai.py`: a request body checked into a task, the task's tokens shaped into Ollama's NDJSON lines, the
mesh's models shaped into Ollama's listings; the routes at the end are thin glue onto the gateway.

Ollama's semantics kept: `stream` defaults to true; `/api/generate` renders the prompt (and `system`) through the
model's chat template unless `raw` is true; an empty prompt (or a chat without messages) only "loads" the model;
a name's `:latest` tag is the bare name. Unknown fields and options are ignored, as Ollama does; a field whose
meaning cannot be honoured (images, structured output, tools, thinking, a custom template) is a 400 naming it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal

from aiohttp import web

from zmqllm import __version__
from zmqllm.core.chat import check_messages
from zmqllm.core.tasks import TaskSpec
from zmqllm.core.validation import MAX_TOKENS_LIMIT
from zmqllm.http.errors import ApiError, bad
from zmqllm.http.fields import body_object, sampling, stops, typed
from zmqllm.http.openai import DEFAULT_MAX_TOKENS
from zmqllm.http.relay import Answering

Kind = Literal["generate", "chat"]

PATHS: tuple[str, ...] = ("/api/",)
"""Paths whose errors take this API's shape (`{"error": "message"}`)."""
NDJSON = "application/x-ndjson"
RUNNING = "Ollama is running"
"""What `GET /` answers: tools probe it to find an Ollama server."""
LATEST = ":latest"
"""The tag Ollama's clients add to a bare name; the mesh's models have no tags."""
UNKNOWN_TIME = "1970-01-01T00:00:00Z"
"""`modified_at` of a model: the gateway sees names, not files."""
NEVER_EXPIRES = "9999-12-31T23:59:59Z"
"""`expires_at` in `/api/ps`: a mesh model stays loaded as long as its nodes run."""
NS_PER_MS = 1_000_000
_UNSERVED: dict[Kind, dict[str, str]] = {
    "generate": {"images": "images are not served (no multimodal engine)",
                 "suffix": "suffix (fill-in-the-middle) is not served",
                 "template": "a custom template is not served: the model's own is used (or send raw: true)",
                 "context": "context (token ids of an earlier answer) is not served: send the whole prompt, or "
                            "use /api/chat",
                 "think": "think is not served (the mesh's models do not separate their thinking)",
                 "logprobs": "logprobs are not served", "top_logprobs": "logprobs are not served",
                 "width": "image generation is not served", "height": "image generation is not served",
                 "steps": "image generation is not served"},
    "chat": {"tools": "tools are not served",
             "think": "think is not served (the mesh's models do not separate their thinking)",
             "logprobs": "logprobs are not served", "top_logprobs": "logprobs are not served"},
}
"""Fields that change what a request means and that the mesh cannot honour: a 400 when set to anything but
their empty value (clients send `tools: []`, `think: false`, `images: []`)."""
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Request:
    """A checked `/api/generate` or `/api/chat` request (`zmqllm.http.relay.Parsed`)."""

    kind: Kind
    model: str | None
    prompt: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    params: dict[str, Any]
    stop: tuple[str, ...]
    stream: bool
    unload: bool = False
    """`keep_alive: 0`: a load-only request then answers `done_reason: unload`."""
    choices: int = 1

    @property
    def loads_only(self) -> bool:
        """Nothing to generate: Ollama answers such a request at once (clients send one to preload a model)."""
        return not self.prompt and not self.messages

    def spec(self, task_id: str, peer: str | None = None) -> TaskSpec:
        return TaskSpec(task_id, self.prompt, self.max_tokens, dict(self.params), self.stop, self.model, peer,
                        self.messages)


def parse(kind: Kind, body: Any) -> Request:
    """Check a request body; raises `ApiError` (400) naming the first field at fault."""
    body = body_object(body)
    model = typed(body.get("model"), "model", str)
    stream = typed(body.get("stream"), "stream", bool)
    _refuse_unserved(kind, body)
    params, max_tokens, stop = _options(typed(body.get("options"), "options", dict) or {})
    if kind == "chat":
        prompt, messages = "", _messages(body.get("messages"))
    else:
        prompt, messages = _generate_input(body)
    return Request(kind, model, prompt, messages, max_tokens, params, stop, True if stream is None else stream,
                   body.get("keep_alive") in (0, "0", "0s"))


def _refuse_unserved(kind: Kind, body: dict[str, Any]) -> None:
    for name, why in _UNSERVED[kind].items():
        if body.get(name) not in (None, False, "", [], {}, 0):
            raise bad(name, why)
    if body.get("format") not in (None, ""):
        raise bad("format", "format (JSON or a schema: structured output) is not served")


def _options(options: dict[str, Any]) -> tuple[dict[str, Any], int, tuple[str, ...]]:
    """Ollama's `options` as a task's sampling params, max_tokens and stops. Load-time and unknown options
    (num_ctx, num_gpu, mirostat, ...) are ignored, as Ollama ignores what its runner does not use."""
    params = sampling(options, "options.")
    return params, _max_tokens(typed(options.get("num_predict"), "options.num_predict", int)), \
        stops(options.get("stop"), "options.stop")


def _max_tokens(num_predict: int | None) -> int:
    """`num_predict`: absent is the gateway's default; negative (-1 "no limit", -2 "fill the context") runs
    until the model stops or its context is full, which the engine bounds."""
    if num_predict is None:
        return DEFAULT_MAX_TOKENS
    if num_predict < 0:
        return MAX_TOKENS_LIMIT
    if not 1 <= num_predict <= MAX_TOKENS_LIMIT:
        raise bad("options.num_predict", f"options.num_predict must be between 1 and {MAX_TOKENS_LIMIT} (or "
                                         f"negative: no limit), got {num_predict}")
    return num_predict


def _generate_input(body: dict[str, Any]) -> tuple[str, tuple[dict[str, str], ...]]:
    """A generate's prompt: verbatim when `raw` (a completion), else a chat of its system and prompt, so the
    model's template wraps it as Ollama's does. An empty prompt stays empty: the request only loads."""
    prompt = typed(body.get("prompt"), "prompt", str) or ""
    system = typed(body.get("system"), "system", str) or ""
    if typed(body.get("raw"), "raw", bool) or not prompt:
        return prompt, ()
    system_turn = ({"role": "system", "content": system},) if system else ()
    return "", (*system_turn, {"role": "user", "content": prompt})


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    """Ollama's messages as a task's chat (none: the request only loads). Images and tool calls are refused."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("messages", "messages must be a list of {role, content} objects")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise bad(f"messages[{i}]", f"messages[{i}] must be an object with role one of {', '.join(_ROLES)} "
                                        "(tools are not served)")
        for field in ("images", "tool_calls"):
            if message.get(field):
                raise bad(f"messages[{i}].{field}", f"messages[{i}].{field}: {field.replace('_', ' ')} are not "
                                                    "served")
        content = typed(message.get("content"), f"messages[{i}].content", str) or ""
        out.append({"role": message["role"], "content": content})
    problem = check_messages(out) if out else None
    if problem is not None:
        raise bad("messages", f"messages: {problem}")  # Ollama's error is one string: it names the field
    return tuple(out)


def resolve(asked: str | None, served: dict[str, list[str]]) -> str | None:
    """The served name a request means: `NAME:latest` is `NAME` (unless a model is literally named so)."""
    if asked is None or asked in served or not asked.endswith(LATEST):
        return asked
    bare = asked[:-len(LATEST)]
    return bare if bare in served else asked


def check_model(name: str, served: dict[str, list[str]]) -> None:
    """A 404 worded as Ollama's (`model 'x' not found`: some clients look for it), listing what the mesh serves."""
    if name not in served:
        raise ApiError(404, f"model {name!r} not found (this mesh serves: {', '.join(sorted(served)) or 'none'})",
                       param="model", code="model_not_found")


def error_body(error: ApiError) -> dict[str, Any]:
    """Ollama's error: `{"error": "message"}` (its clients raise ResponseError with it and the status)."""
    return {"error": error.message}


class Framing:
    """How one request's answer is shaped (`zmqllm.http.relay.Framing`): one NDJSON line per token, a last
    line with `done: true` and the counts. Each line's `created_at` is its own time, as Ollama's."""

    content_type = NDJSON

    def __init__(self, kind: Kind, model: str, clock: Callable[[], float] = time.time) -> None:
        self.kind, self.model, self.clock = kind, model, clock

    def line(self, text: str, done: dict[str, Any] | None = None) -> dict[str, Any]:
        """One answer object: a piece of text, or (with `done`, a task's DONE) the last one with its counts."""
        piece = ({"message": {"role": "assistant", "content": text}} if self.kind == "chat"
                 else {"response": text})
        head = {"model": self.model, "created_at": rfc3339(self.clock()), **piece}
        if done is None:
            return {**head, "done": False}
        return {**head, "done": True, "done_reason": done.get("finish_reason", "stop"), **counts(done)}

    def whole(self, texts: Sequence[str], dones: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self.line(texts[0], dones[0])

    def opening(self) -> bytes:
        return b""

    def token(self, index: int, text: str) -> bytes:
        return ndjson(self.line(text))

    def finish(self, index: int, done: dict[str, Any]) -> bytes:
        return ndjson(self.line("", done))

    def closing(self, dones: Sequence[dict[str, Any]]) -> bytes:
        return b""  # one choice: its finish line ends the stream

    def failure(self, error: ApiError) -> bytes:
        """Mid-stream: Ollama's clients raise on a line holding `error`."""
        return ndjson(error_body(error))


def counts(done: dict[str, Any]) -> dict[str, int]:
    """A DONE's usage and timings as Ollama's counts and durations (ns; 0 where unknown). The executor's time to
    first token, queueing included, stands for the prompt's evaluation; the rest of its time for generation."""
    usage, timings = done.get("usage") or {}, done.get("timings") or {}
    total_ms, ttft_ms = float(timings.get("total_ms", 0.0)), float(timings.get("ttft_ms", 0.0))
    return {"total_duration": round(total_ms * NS_PER_MS), "load_duration": 0,
            "prompt_eval_count": int(usage.get("prompt_tokens", 0)),
            "prompt_eval_duration": round(ttft_ms * NS_PER_MS), "eval_count": int(usage.get("completion_tokens", 0)),
            "eval_duration": round(max(total_ms - ttft_ms, 0.0) * NS_PER_MS)}


def loaded(kind: Kind, model: str, unload: bool, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """The answer to a request with nothing to generate: the model is (and stays) loaded on its nodes."""
    reason = {"done_reason": "unload" if unload else "load"}
    return {**Framing(kind, model, clock).line(""), "done": True, **reason}


def ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def rfc3339(unix_s: float) -> str:
    """Ollama's time format: UTC with microseconds and `Z`."""
    return datetime.fromtimestamp(unix_s, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def tags(served: dict[str, list[str]]) -> dict[str, Any]:
    """`GET /api/tags`: every model the mesh serves, with the live nodes serving it."""
    return {"models": [model_entry(name, nodes) for name, nodes in sorted(served.items())]}


def running(served: dict[str, list[str]]) -> dict[str, Any]:
    """`GET /api/ps`: the same models, as loaded (a node serves its model for as long as it runs)."""
    return {"models": [{**model_entry(name, nodes), "expires_at": NEVER_EXPIRES, "size_vram": 0}
                       for name, nodes in sorted(served.items())]}


def shown(name: str, nodes: list[str]) -> dict[str, Any]:
    """`POST /api/show`: what the gateway knows of a model (its name and nodes: the file stays on them)."""
    return {"modelfile": f"# served by the zmqllm mesh on {', '.join(sorted(nodes))}\nFROM {name}\n",
            "parameters": "", "template": "", "details": details(name), "model_info": {},
            "capabilities": ["completion"], "modified_at": UNKNOWN_TIME, "nodes": sorted(nodes)}


def model_entry(name: str, nodes: list[str]) -> dict[str, Any]:
    """A model as Ollama lists it. Size and time are unknown here (0, the epoch); the digest is the name's, so
    it is stable for clients that cache by it."""
    return {"name": name, "model": name, "modified_at": UNKNOWN_TIME, "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(), "details": details(name), "nodes": sorted(nodes)}


def details(name: str) -> dict[str, Any]:
    """Ollama's `details`; the family is read off the name (`gemma3-270m` -> `gemma3`), a hint for display."""
    family = re.split(r"[-:_.]", name, maxsplit=1)[0]
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family], "parameter_size": "",
            "quantization_level": ""}


def routes(gateway: Answering) -> list[web.RouteDef]:
    """Ollama's routes on the gateway (GET routes answer HEAD too)."""

    async def root(request: web.Request) -> web.Response:
        return web.Response(text=RUNNING)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": __version__})

    async def list_tags(request: web.Request) -> web.Response:
        return web.json_response(tags(gateway.mesh.models()))

    async def list_running(request: web.Request) -> web.Response:
        return web.json_response(running(gateway.mesh.models()))

    async def show(request: web.Request) -> web.Response:
        body = await gateway.body(request)
        asked = typed(body.get("model") or body.get("name"), "model", str) if isinstance(body, dict) else None
        if not asked:
            raise bad("model", "model is required")
        served = gateway.mesh.models()
        name = resolve(asked, served) or asked
        check_model(name, served)
        return web.json_response(shown(name, served[name]))

    async def generate(request: web.Request) -> web.StreamResponse:
        return await answer(gateway, request, "generate")

    async def chat(request: web.Request) -> web.StreamResponse:
        return await answer(gateway, request, "chat")

    return [web.get("/", root), web.get("/api/version", version), web.get("/api/tags", list_tags),
            web.get("/api/ps", list_running), web.post("/api/show", show), web.post("/api/generate", generate),
            web.post("/api/chat", chat)]


async def answer(gateway: Answering, request: web.Request, kind: Kind) -> web.StreamResponse:
    """A generate or chat: answered at once when it only loads, else run as a task of this node."""
    parsed = parse(kind, await gateway.body(request))
    served = gateway.mesh.models()
    parsed = replace(parsed, model=resolve(parsed.model, served))
    if parsed.model is not None:
        check_model(parsed.model, served)
    if parsed.loads_only:
        return web.json_response(loaded(kind, gateway.model_for(parsed.model), parsed.unload))
    return await gateway.answer(request, parsed, lambda _id, _created, model: Framing(kind, model))

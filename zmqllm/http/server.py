"""The gateway's aiohttp server: routes, API keys, request ids, start and stop inside the daemon's loop.

aiohttp runs on the daemon's own event loop, so a token goes from the origin's listener to the HTTP client
without a thread hop (docs/design.md). Handlers are cancelled when their client disconnects, and a cancelled
handler cancels its task on the mesh.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from zmqllm.http import openai
from zmqllm.http.errors import ApiError, from_task_error
from zmqllm.http.host import Mesh
from zmqllm.http.stream import TaskRun

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 2**20
"""Largest request body (a long chat fits; a runaway upload gets 413)."""
SHUTDOWN_GRACE_S = 2.0
"""How long stopping waits for open requests; the node has already ended their tasks by then."""
OPEN_PATHS = frozenset({"/health"})
"""Paths served without an API key (load balancers probe them)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    """The HTTP front door of one node: `start()` binds every address, `stop()` closes them."""

    def __init__(self, mesh: Mesh, addresses: Sequence[tuple[str, int]], api_keys: Sequence[str] = (),
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.mesh = mesh
        self.addresses = list(addresses)
        self._keys = [key.encode() for key in api_keys]
        self._wall_clock = wall_clock
        self._runner: web.AppRunner | None = None
        self.urls: list[str] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=MAX_BODY_BYTES)
        for prefix in ("/v1", ""):  # llama-server answers without /v1 too; many clients are set up so
            app.router.add_get(f"{prefix}/models", self._models)
            app.router.add_get(f"{prefix}/models/{{model}}", self._model)
            app.router.add_post(f"{prefix}/completions", self._completions)
            app.router.add_post(f"{prefix}/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        return app

    async def start(self) -> list[str]:
        """Bind every address (port 0: a free one) and serve; returns the base URLs actually bound.
        Raises OSError when an address cannot be bound (taken, not this machine's)."""
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=SHUTDOWN_GRACE_S)
        await self._runner.setup()
        try:
            for host, port in self.addresses:
                sock = _listening_socket(host, port)
                await web.SockSite(self._runner, sock).start()
                bound_host, bound_port = sock.getsockname()[:2]
                self.urls.append(f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}")
        except BaseException:
            await self.stop()
            raise
        return self.urls

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- middlewares ---------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every answer carries `x-request-id` (the client's, or a new one); every error is OpenAI's shape."""
        request_id = request.headers.get("x-request-id")
        if not request_id:  # made here, and put among the request's headers for the handlers to echo
            request_id = uuid.uuid4().hex
            headers = CIMultiDict(request.headers)
            headers["x-request-id"] = request_id
            request = request.clone(headers=CIMultiDictProxy(headers))
        try:
            response = await handler(request)
        except ApiError as exc:
            response = web.json_response(exc.body(), status=exc.status, headers=exc.headers())
        except web.HTTPException as exc:  # aiohttp's own: no route, wrong method
            if exc.status < 400:
                raise
            response = web.json_response(ApiError(exc.status, exc.reason).body(), status=exc.status)
        if not response.prepared:
            response.headers["x-request-id"] = request_id
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """`Authorization: Bearer KEY` against every configured key, in constant time; keys are never logged."""
        if self._keys and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
            offered = token.strip().encode()
            matches = [hmac.compare_digest(offered, key) for key in self._keys]  # no early exit: no timing hint
            if not any(matches):
                raise ApiError(401, "invalid API key", code="invalid_api_key")
        return await handler(request)

    # -- routes --------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        served = self.mesh.models()
        if not served:
            return web.json_response({"status": "unavailable", "node": self.mesh.name,
                                      "reason": "no live node of the mesh serves a model"}, status=503)
        return web.json_response({"status": "ok", "node": self.mesh.name, "models": sorted(served)})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(openai.models_list(self.mesh.models()))

    async def _model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        served = self.mesh.models()
        if name not in served:
            raise _unknown_model(name, served)
        return web.json_response(openai.model_entry(name, served[name]))

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, "completion")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, "chat")

    async def _run(self, request: web.Request, kind: openai.Kind) -> web.StreamResponse:
        """A completion or chat: checked, submitted as a task of this node, answered whole or streamed."""
        parsed = openai.parse(kind, await _json_body(request))
        model = self._model_for(parsed.model)
        task_id = uuid.uuid4().hex
        reply = openai.Reply(kind, ("chatcmpl-" if kind == "chat" else "cmpl-") + task_id,
                             int(self._wall_clock()), model)
        run = TaskRun(self.mesh, parsed.spec(task_id, request.headers.get("x-zmqllm-peer")))
        log.debug("http %s %s -> task %s", request.method, request.path, task_id)
        try:
            if parsed.stream:
                return await _stream(request, parsed, reply, run)
            return await _whole(request, reply, run)
        finally:
            run.cancel()  # a no-op once the task ended; otherwise its client left (or this failed): stop it

    def _model_for(self, asked: str | None) -> str:
        """The model a request runs on: the one named (404 when no live node serves it), else the mesh's only
        one."""
        served = self.mesh.models()
        if asked is not None:
            if asked not in served:
                raise _unknown_model(asked, served)
            return asked
        if len(served) == 1:
            return next(iter(served))
        if not served:
            raise ApiError(503, "no live node of the mesh serves a model", code="no_peer_for_model")
        raise ApiError(400, f"the mesh serves several models ({', '.join(sorted(served))}): name one",
                       param="model", code="model_required")


async def _whole(request: web.Request, reply: openai.Reply, run: TaskRun) -> web.Response:
    pieces: list[str] = []
    while True:
        for type_, fields in await run.next_batch():
            if type_ == "TOKEN":
                pieces.append(fields["text"])
            elif type_ == "ERROR":
                raise from_task_error(fields)
            elif type_ == "DONE":
                body = reply.response("".join(pieces), fields.get("finish_reason", "stop"), fields.get("usage", {}))
                return web.json_response(body, headers=_task_headers(run, fields))


async def _stream(request: web.Request, parsed: openai.Request, reply: openai.Reply,
                  run: TaskRun) -> web.StreamResponse:
    """Server-sent events. Headers wait for the task's first message, so a task that fails before its first
    token (busy, unknown peer) still gets its proper status code rather than a 200 with an error inside."""
    batch = await run.next_batch()
    while not run.finished and not any(type_ == "TOKEN" for type_, _ in batch):
        batch += await run.next_batch()  # a failover before the first token changes nothing for the client
    if batch[-1][0] == "ERROR" and not any(type_ == "TOKEN" for type_, _ in batch):
        raise from_task_error(batch[-1][1])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "x-request-id": request.headers["x-request-id"], **_task_headers(run, {})})
    await response.prepare(request)
    first = True
    while True:
        out: list[bytes] = []
        for type_, fields in batch:
            if type_ == "TOKEN":
                out.append(openai.sse(reply.chunk(fields["text"], first=first, with_usage=parsed.include_usage)))
                first = False
            elif type_ == "ERROR":  # mid-stream: OpenAI's clients raise on an `error` event
                out.append(openai.sse(from_task_error(fields).body()))
            elif type_ == "DONE":
                if first and reply.kind == "chat":
                    out.append(openai.sse(reply.chunk("", first=True, with_usage=parsed.include_usage)))
                out.append(openai.sse(reply.chunk(None, fields.get("finish_reason", "stop"),
                                                  with_usage=parsed.include_usage)))
                if parsed.include_usage:
                    out.append(openai.sse(reply.usage_chunk(fields.get("usage", {}))))
                out.append(openai.SSE_DONE)
        try:
            await response.write(b"".join(out))
        except ConnectionResetError:  # the client left between two reads: `_run` cancels the task
            return response
        if run.finished:
            await response.write_eof()
            return response
        batch = await run.next_batch()


def _task_headers(run: TaskRun, done: dict[str, Any]) -> dict[str, str]:
    """Which task a response is (`zmqllm result ID`), and which node produced its last token when known."""
    headers = {"x-zmqllm-task-id": run.task_id}
    if done.get("executed_by"):
        headers["x-zmqllm-executed-by"] = str(done["executed_by"])
    return headers


def _unknown_model(name: str, served: dict[str, list[str]]) -> ApiError:
    listing = ", ".join(sorted(served)) or "none"
    return ApiError(404, f"the model {name!r} does not exist in this mesh (it serves: {listing})", param="model",
                    code="model_not_found")


async def _json_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="too_large") from None
    try:
        return json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None


def _listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound here, so port 0's real port can be read back and printed)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock

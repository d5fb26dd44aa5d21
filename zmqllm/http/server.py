"""The gateway's aiohttp server: routes, API keys, request ids, start and stop inside the daemon's loop.

aiohttp runs on the daemon's own event loop, so a token goes from the origin's listener to the HTTP client
without a thread hop (docs/design.md). Handlers are cancelled when their client disconnects, and a cancelled
handler cancels its task on the mesh.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web
from prometheus_client.registry import CollectorRegistry
from multidict import CIMultiDict, CIMultiDictProxy

from zmqllm.http import anthropic, ollama, openai, relay
from zmqllm.http.errors import ApiError
from zmqllm.http.host import Mesh
from zmqllm.http.metrics import HttpStats, api_of, exposition
from zmqllm.http.relay import FramingFactory, Parsed
from zmqllm.http.stream import TaskRuns

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 2**20
"""Largest request body (a long chat fits; a runaway upload gets 413)."""
SHUTDOWN_GRACE_S = 2.0
"""How long stopping waits for open requests; the node has already ended their tasks by then."""
MAX_DEADLINE_S = 24 * 3600.0
"""Longest `x-zmqllm-deadline` (a day: longer is a typo)."""
CLIENT_LEFT = 499
"""The status a request is counted under when its client went away first (nginx's convention)."""
OPEN_PATHS = frozenset({"/health", "/"})
"""Paths served without an API key (load balancers probe them)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ERROR_SHAPES: list[tuple[tuple[str, ...], Callable[[ApiError], dict[str, Any]]]] = [
    (anthropic.PATHS, anthropic.error_body), (ollama.PATHS, ollama.error_body)]
"""Paths whose errors take another API's shape than OpenAI's (the default)."""


class Gateway:
    """The HTTP front door of one node: `start()` binds every address, `stop()` closes them."""

    def __init__(self, mesh: Mesh, addresses: Sequence[tuple[str, int]], api_keys: Sequence[str] = (),
                 wall_clock: Callable[[], float] = time.time, max_body_bytes: int = MAX_BODY_BYTES,
                 registry: CollectorRegistry | None = None, stats: HttpStats | None = None,
                 apis: bool = True) -> None:
        """`registry`: what /metrics serves (none: no /metrics); `stats`: where requests are counted;
        `apis` False serves only /health and /metrics (a daemon's `--metrics` address)."""
        self.mesh = mesh
        self.registry = registry
        self.stats = stats
        self.apis = apis
        self.addresses = list(addresses)
        self.max_body_bytes = max_body_bytes
        self._keys = [key.encode() for key in api_keys]
        self._wall_clock = wall_clock
        self._runner: web.AppRunner | None = None
        self.urls: list[str] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=self.max_body_bytes)
        app.router.add_get("/health", self._health)
        if self.registry is not None:
            registry = self.registry
            app.router.add_get("/metrics", lambda _request: _metrics(registry))
        if not self.apis:
            return app
        for prefix in ("/v1", ""):  # llama-server answers without /v1 too; many clients are set up so
            app.router.add_get(f"{prefix}/models", self._models)
            app.router.add_get(f"{prefix}/models/{{model}}", self._model)
            app.router.add_post(f"{prefix}/completions", self._completions)
            app.router.add_post(f"{prefix}/chat/completions", self._chat)
        app.add_routes(anthropic.routes(self))
        app.add_routes(ollama.routes(self))
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
        """Every answer carries `x-request-id` (the client's, or a new one); every error takes the shape of the
        API its path belongs to; every request is counted for /metrics."""
        request_id = request.headers.get("x-request-id")
        if not request_id:  # made here, and put among the request's headers for the handlers to echo
            request_id = uuid.uuid4().hex
            headers = CIMultiDict(request.headers)
            headers["x-request-id"] = request_id
            request = request.clone(headers=CIMultiDictProxy(headers))
        started, status = time.perf_counter(), CLIENT_LEFT
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # aiohttp's own: no route, wrong method
                if exc.status < 400:
                    raise
                response = _error_response(request.path, ApiError(exc.status, exc.reason))
            except ApiError as exc:
                response = _error_response(request.path, exc)
            except Exception:
                status = 500
                raise
            status = response.status
        finally:
            if self.stats is not None:
                routed = request.match_info.route.resource is not None
                self.stats.record(api_of(request.path, routed), status, time.perf_counter() - started)
        if not response.prepared:
            response.headers["x-request-id"] = request_id
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """`Authorization: Bearer KEY` against every configured key, in constant time; keys are never logged."""
        if self._keys and request.path not in OPEN_PATHS:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else ""
            token = token or request.headers.get("x-api-key", "").strip()  # Anthropic's clients send it so
            if not token:
                raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY' (or 'x-api-key: KEY')",
                               code="invalid_api_key")
            offered = token.encode()
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
        return await self._openai(request, "completion")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, "chat")

    async def _openai(self, request: web.Request, kind: openai.Kind) -> web.StreamResponse:
        parsed = openai.parse(kind, await self.body(request))
        return await self.answer(request, parsed, lambda id_, created, model: openai.Framing(
            kind, id_, created, model, parsed.include_usage), "chatcmpl-" if kind == "chat" else "cmpl-")

    # -- what every API's routes use (`zmqllm.http.relay.Answering`) -------------------------

    async def answer(self, request: web.Request, parsed: Parsed, framing: FramingFactory,
                     id_prefix: str = "") -> web.StreamResponse:
        """A checked request as tasks of this node (one per choice), answered whole or streamed. Its tasks are
        cancelled when the handler ends first: its client left (aiohttp cancels the handler) or it failed."""
        model = self.model_for(parsed.model)
        deadline = _deadline(request)
        specs = []
        for index in range(parsed.choices):
            spec = parsed.spec(uuid.uuid4().hex, request.headers.get("x-zmqllm-peer"))
            specs.append(replace(spec, deadline_s=deadline, params=_choice_params(spec.params, index)))
        runs = TaskRuns(self.mesh, specs)
        log.debug("http %s %s -> tasks %s", request.method, request.path, ",".join(runs.task_ids))
        shape = framing(id_prefix + runs.task_ids[0], int(self._wall_clock()), model)
        try:
            if parsed.stream:
                return await relay.stream(request, runs, shape)
            return await relay.whole(runs, shape)
        finally:
            runs.cancel()  # a no-op once the tasks ended

    async def body(self, request: web.Request) -> Any:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the request body is larger than {self.max_body_bytes} bytes (the node's "
                                "http_max_body_mb)", code="too_large") from None
        try:
            return json.loads(raw)
        except ValueError:  # UnicodeDecodeError included
            raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None

    def model_for(self, asked: str | None) -> str:
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


async def _metrics(registry: CollectorRegistry) -> web.Response:
    return exposition(registry)


def _deadline(request: web.Request) -> float | None:
    """`x-zmqllm-deadline: SECONDS` ends the request's tasks with 504 (or an error event) when they run longer."""
    text = request.headers.get("x-zmqllm-deadline")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_DEADLINE_S:
        raise ApiError(400, f"x-zmqllm-deadline must be seconds between 0 and {MAX_DEADLINE_S:g}, got {text!r}",
                       param="x-zmqllm-deadline", code="invalid_value")
    return seconds


def _choice_params(params: dict[str, Any], index: int) -> dict[str, Any]:
    """A choice's sampling: a request's seed is the first choice's, the next choices take the next seeds (the
    same seed n times would give n copies of one answer)."""
    if index and params.get("seed") is not None:
        return {**params, "seed": params["seed"] + index}
    return params


def _error_response(path: str, error: ApiError) -> web.Response:
    """An error in the shape of the API the path belongs to (each client parses only its own)."""
    for prefixes, shape in ERROR_SHAPES:
        if path.startswith(prefixes):
            return web.json_response(shape(error), status=error.status, headers=error.headers())
    return web.json_response(error.body(), status=error.status, headers=error.headers())


def _unknown_model(name: str, served: dict[str, list[str]]) -> ApiError:
    listing = ", ".join(sorted(served)) or "none"
    return ApiError(404, f"the model {name!r} does not exist in this mesh (it serves: {listing})", param="model",
                    code="model_not_found")


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

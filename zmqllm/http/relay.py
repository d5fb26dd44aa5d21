"""A request's tasks relayed to its HTTP client in the shape its API speaks: whole, or streamed as it comes.

Every API (OpenAI, Anthropic, Ollama) checks its body into a `Parsed` request and shapes its answer with a
`Framing`; this module is the one loop between the mesh's task messages and the client, so every API gets the
same behaviour on refusals, errors mid-stream, disconnects and failovers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiohttp import web

from zmqllm.core.tasks import TaskSpec
from zmqllm.http.errors import ApiError, from_task_error
from zmqllm.http.host import Mesh
from zmqllm.http.stream import TaskRuns


class Framing(Protocol):
    """How one API shapes an answer. One instance per request (it may remember what it sent). `done` is a
    task's DONE (CONTRACT: finish_reason, usage, executed_by); `index` the choice (0 unless OpenAI's n > 1)."""

    content_type: str
    """The streamed answer's type: text/event-stream (SSE) or application/x-ndjson."""

    def whole(self, texts: Sequence[str], dones: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The JSON body of an answer that did not stream (one text and DONE per choice)."""

    def opening(self) -> bytes:
        """What a stream sends before its first token (b"" when the API sends nothing)."""

    def token(self, index: int, text: str) -> bytes:
        """One piece of generated text."""

    def finish(self, index: int, done: dict[str, Any]) -> bytes:
        """One choice has ended."""

    def closing(self, dones: Sequence[dict[str, Any]]) -> bytes:
        """Every choice has ended: totals and the stream's end marker."""

    def failure(self, error: ApiError) -> bytes:
        """A task failed after the stream had begun: the API's in-stream error event."""


class Parsed(Protocol):
    """A checked request of any API."""

    @property
    def model(self) -> str | None:
        """The model asked for (None: the mesh's only one)."""

    @property
    def stream(self) -> bool: ...

    @property
    def choices(self) -> int:
        """How many independent answers (tasks) the request wants."""

    def spec(self, task_id: str, peer: str | None = None) -> TaskSpec:
        """The task one choice runs as."""


FramingFactory = Callable[[str, int, str], Framing]
"""Makes a request's Framing from its answer id, creation time (Unix seconds) and the model that runs it."""


class Answering(Protocol):
    """What an API's routes use of the gateway (`zmqllm.http.server.Gateway`), so each API's module stays
    apart from the server and from the other APIs."""

    @property
    def mesh(self) -> Mesh: ...

    async def body(self, request: web.Request) -> Any:
        """The request's JSON body (400 when it is not JSON, 413 when it is over the limit)."""

    def model_for(self, asked: str | None) -> str:
        """The model a request runs on: the one named (404 when no live node serves it), else the mesh's only
        one (400 when it serves several)."""

    async def answer(self, request: web.Request, parsed: Parsed, framing: FramingFactory,
                     id_prefix: str = "") -> web.StreamResponse:
        """Run a checked request as tasks of this node and answer whole or streamed."""


async def whole(runs: TaskRuns, framing: Framing) -> web.Response:
    """Wait for every choice, answer once. The first error fails the request (the other choices stop)."""
    texts = [""] * runs.count
    dones: list[dict[str, Any]] = [{} for _ in range(runs.count)]
    while not runs.finished:
        for index, type_, fields in await runs.next_batch():
            if type_ == "TOKEN":
                texts[index] += fields["text"]
            elif type_ == "ERROR":
                raise from_task_error(fields)
            elif type_ == "DONE":
                dones[index] = fields
    return web.json_response(framing.whole(texts, dones), headers=task_headers(runs, dones))


async def stream(request: web.Request, runs: TaskRuns, framing: Framing) -> web.StreamResponse:
    """Stream every choice. Headers wait for the first token, so a task refused before it (busy, unknown peer)
    still gets its proper status code rather than a 200 with an error inside."""
    batch = await runs.next_batch()
    while not runs.finished and not any(type_ == "TOKEN" for _, type_, _ in batch):
        batch += await runs.next_batch()  # a failover before the first token changes nothing for the client
    early = [fields for _, type_, fields in batch if type_ == "ERROR"]
    if early and not any(type_ == "TOKEN" for _, type_, _ in batch):
        raise from_task_error(early[0])
    response = web.StreamResponse(headers={"Content-Type": framing.content_type, "Cache-Control": "no-cache",
                                           "x-request-id": request.headers["x-request-id"],
                                           **task_headers(runs, [], runs.executor())})
    await response.prepare(request)
    dones: list[dict[str, Any]] = [{} for _ in range(runs.count)]
    out = [framing.opening()]
    failed = False
    while True:
        for index, type_, fields in batch:
            if type_ == "TOKEN":
                out.append(framing.token(index, fields["text"]))
            elif type_ == "ERROR":
                out.append(framing.failure(from_task_error(fields)))
                runs.cancel()  # one choice failed: the answer is incomplete, the others stop
                failed = True
                break
            elif type_ == "DONE":
                dones[index] = fields
                out.append(framing.finish(index, fields))
        if runs.finished and not failed:
            out.append(framing.closing(dones))  # after the batch: it may hold several choices' DONE
        try:
            await response.write(b"".join(out))
        except ConnectionResetError:  # the client left between two reads: the handler cancels the tasks
            return response
        if runs.finished:
            await response.write_eof()
            return response
        out = []
        batch = await runs.next_batch()


def task_headers(runs: TaskRuns, dones: Sequence[dict[str, Any]], executor: str | None = None) -> dict[str, str]:
    """Which tasks a response is (`zmqllm result ID`), and which nodes produced them (a stream's header can
    only name the node that produces its first token)."""
    headers = {"x-zmqllm-task-id": ",".join(runs.task_ids)}
    executors = [str(done["executed_by"]) for done in dones if done.get("executed_by")] + [executor or ""]
    executors = [name for name in executors if name]
    if executors:
        headers["x-zmqllm-executed-by"] = ",".join(dict.fromkeys(executors))
    return headers

"""Talking to a node: the async client, and a sync wrapper for scripts.

The CLI, the dashboard and the tests all use this; it speaks the same protocol
any other program would. ZeroMQ connects never fail by themselves, so every wait
here is bounded: a node that does not answer within `timeout` raises
`MeshUnreachable` instead of hanging.

Streams yield the CONTRACT's JSON events as dicts: `accepted`, `token`, `done`,
`error` (each with a `type` key); a stream ends after its one `done` or `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import zmq

from zmqllm.net import keys
from zmqllm.core import protocol
from zmqllm.core.events import LEASE_S
from zmqllm.net.keys import MeshKey
from zmqllm.core.protocol import Message, ProtocolError
from zmqllm.net.transport import Channel, Monitor, Sent
from zmqllm.client.resume import Received

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_TOKENS = 128
_PROBE_AFTER = 0.5
"""Fraction of `timeout` a stream stays silent before asking the node whether it is still there."""
_EVENT_TYPES = {"ACCEPTED": "accepted", "TOKEN": "token", "FAILOVER": "failover", "DONE": "done", "ERROR": "error"}
MOVE_PROBE_S = 2.0
"""How long a client moving off a lost node waits for each other node to answer before trying the next."""
PEERS_REFRESH_S = 10.0
"""How old the client's list of the mesh's endpoints may grow before a submit refreshes it (in the background)."""


class MeshUnreachable(Exception):
    """The node did not answer within the timeout (`refused`: it turned down our security handshake)."""

    def __init__(self, endpoint: str, timeout: float, refused: str = "") -> None:
        super().__init__(f"{endpoint} refused this client: {refused}" if refused else
                         f"no answer from {endpoint} within {timeout:g} s (is a daemon running there?)")
        self.endpoint = endpoint
        self.refused = refused


class NodeLost(MeshUnreachable):
    """The node closed the connection (it stopped, died or is restarting)."""

    def __init__(self, endpoint: str) -> None:
        Exception.__init__(self, f"{endpoint} closed the connection (the node stopped or restarted)")
        self.endpoint = endpoint
        self.refused = ""


class RequestFailed(Exception):
    """The node answered a query with an ERROR."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def event_from(message: Message) -> dict[str, Any]:
    """A task message as the CONTRACT's JSON event (a FAILOVER the origin reports is an executor's)."""
    event: dict[str, Any] = {"type": _EVENT_TYPES[message.type]}
    if message.type == "FAILOVER":
        event["kind"] = "executor"
    event.update(message.fields)
    return event


class _Stream:
    """Messages of one task waiting to be read: a deque and one wake-up flag,
    cheaper per token than an asyncio.Queue."""

    def __init__(self) -> None:
        self.messages: deque[Message] = deque()
        self.arrived = asyncio.Event()


class AsyncClient:
    """One DEALER to one node. Use as `async with AsyncClient(endpoint) as client:`.
    `mesh_key` (default: the file `ZMQLLM_MESH_KEY` names, if any) makes it a
    CURVE client; opening raises `keys.KeyFileError` for an unusable key file."""

    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT_S, mesh_key: MeshKey | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.mesh_key = mesh_key
        self._monitor: Monitor | None = None
        self._refused = ""  # why the node refused our handshake, once it has
        self.client_id = "client-" + secrets.token_hex(4)
        self._ctx: zmq.Context | None = None
        self._channel: Channel | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._streams: dict[str, _Stream] = {}
        self._events: _Stream | None = None
        self._runs: dict[str, _Stream] = {}
        self._stream_refs: dict[int, _Stream] = {}
        self._heard_at = float("-inf")
        """When the node last sent anything (monotonic s): a stream waits on silence, not on each wait."""
        self._lost = False
        """The connection to the node closed (it died or restarted): streams move to another node."""
        self.endpoints: list[str] = [endpoint]
        """The mesh's live endpoints as last learnt (this node's first): where a stream goes if it is lost."""
        self._endpoints_at = float("-inf")
        self._moving = asyncio.Lock()
        self._connection = 0
        """Counts the connections this client has had: a stream moves only off the one it was lost on."""
        self._background: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> AsyncClient:
        self._ctx = zmq.Context()
        self._connect(self.endpoint)
        return self

    def _connect(self, endpoint: str) -> None:
        """One DEALER to `endpoint`, watched for a refused handshake and for the connection closing."""
        if self._ctx is None:
            raise RuntimeError("client is not open: use `async with AsyncClient(...)`")
        key = self.mesh_key or keys.from_env()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, self.client_id.encode())  # nodes (and their traces) name us by it
        if key is not None:
            key.dial(sock)
        self._monitor = Monitor(sock, keys.HANDSHAKE_FAILED | zmq.EVENT_DISCONNECTED,
                                lambda event: self._on_socket_event(event, key))
        sock.connect(endpoint)
        self.endpoint, self._lost, self._refused = endpoint, False, ""
        self._heard_at = float("-inf")
        self._connection += 1
        self._channel = Channel(sock, self._on_frames)

    def _disconnect(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _on_socket_event(self, event: int, key: MeshKey | None) -> None:
        if event == zmq.EVENT_DISCONNECTED:
            self._lost = True  # the node closed the connection: it died, or is restarting
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(NodeLost(self.endpoint))
            for stream in [*self._streams.values(), *self._runs.values()]:
                stream.arrived.set()
        else:
            self._on_handshake_failed(event, key)

    def _on_handshake_failed(self, event: int, key: MeshKey | None) -> None:
        """The node turned down our security handshake: it never will accept, so
        waiting requests fail now with the reason instead of at their timeout."""
        self._refused = keys.handshake_failure(event, key)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MeshUnreachable(self.endpoint, self.timeout, self._refused))
        for stream in self._streams.values():
            stream.arrived.set()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        self._disconnect()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- queries -------------------------------------------------------------------

    async def peers(self) -> list[dict[str, Any]]:
        """Every node of the mesh as this node sees it (CONTRACT peer rows)."""
        return list((await self.request("GET_PEERS"))["peers"])

    async def status(self) -> dict[str, Any]:
        """This node's own status."""
        return dict((await self.request("GET_STATUS"))["status"])

    async def request(self, type_: str, **fields: Any) -> Message:
        """Send one request and wait (bounded) for the reply that answers it."""
        if self._refused:
            raise MeshUnreachable(self.endpoint, self.timeout, self._refused)
        message = self._send(type_, **fields)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message.id] = future
        try:
            async with asyncio.timeout(self.timeout):  # not wait_for: on 3.11 it can swallow a cancel
                reply = await future
        except TimeoutError:
            raise MeshUnreachable(self.endpoint, self.timeout, self._refused) from None
        finally:
            self._pending.pop(message.id, None)
        if reply.type == "ERROR":
            raise RequestFailed(reply["code"], reply["message"])
        return reply

    # -- tasks -----------------------------------------------------------------------

    async def submit(
        self,
        prompt: str,
        *,
        model: str | None = None,
        peer: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        params: dict[str, Any] | None = None,
        stop: Sequence[str] = (),
        task_id: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        failover: bool = True,
        deadline_s: float | None = None,
        detach: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Submit a completion (or, with `messages` and an empty prompt, a chat) and stream its events until
        `done` or `error`. If the node it went to is lost (its connection closes, or it falls silent for
        `timeout`), the task moves to another live node of the mesh with what was received, and the stream goes
        on after one `failover` event of kind `origin`: every token once, in order (unless `failover` is False).
        `detach`: the stream ends at `accepted`; the task runs on without this client, replicated to a peer so it
        survives its origin, and `result` (through any node) gives its end."""
        task_id = task_id or uuid.uuid4().hex
        stream = self._streams.setdefault(task_id, _Stream())
        fields = dict(task_id=task_id, prompt=prompt, max_tokens=max_tokens, params=params or {}, stop=list(stop),
                      model=model, peer=peer, messages=list(messages) if messages else None,
                      failover=None if failover else False, deadline_s=deadline_s, detach=detach or None)
        received = Received()
        try:
            self._send("SUBMIT", **fields)
            connection = self._connection
            if failover:
                self._learn_endpoints()
            while True:
                try:
                    message = await self._next_for_task(stream)
                except MeshUnreachable as exc:
                    lost = self.endpoint
                    if not failover or self._refused or not await self._move_off(connection):
                        raise
                    stream.messages.clear()  # whatever the lost node had queued is replayed or superseded
                    self._send("SUBMIT", **fields, **received.resume_fields())
                    connection = self._connection
                    yield {"type": "failover", "kind": "origin", "task_id": task_id, "from": lost,
                           "to": self.endpoint, "at_seq": received.count, "reason": str(exc)}
                    continue
                if message.type == "TOKEN" and not received.accept(message["seq"], message["text"], message["ids"]):
                    continue  # already received: the new origin replays the resumed prefix to a resend
                yield event_from(message)
                if message.type in ("DONE", "ERROR") or (detach and message.type == "ACCEPTED"):
                    return
        finally:
            self._streams.pop(task_id, None)

    def _learn_endpoints(self) -> None:
        """Refresh, in the background and at most every PEERS_REFRESH_S, where this client could go if its node
        is lost: the endpoints of the nodes it sees alive (a submit does not wait for it)."""
        now = time.monotonic()
        if now - self._endpoints_at < PEERS_REFRESH_S:
            return
        self._endpoints_at = now

        async def learn() -> None:
            with contextlib.suppress(MeshUnreachable, RequestFailed, RuntimeError):
                rows = await self.peers()
                alive = [row["endpoint"] for row in rows if row.get("state") == "alive" and row.get("endpoint")]
                self.endpoints = list(dict.fromkeys([self.endpoint, *alive, *self.endpoints]))

        task = asyncio.get_running_loop().create_task(learn())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _move_off(self, connection: int) -> bool:
        """Connect to another live node of the mesh instead of the lost one (each is asked for its status,
        within MOVE_PROBE_S; the lost one last, if it closed the connection rather than fell silent). True once
        connected, or when another stream already moved this client; False when no node answers."""
        async with self._moving:
            if self._connection != connection and not self._lost:
                return True
            lost = self.endpoint
            candidates = [e for e in self.endpoints if e != lost]
            if self._lost:
                candidates.append(lost)  # it closed the connection: it may be back from a restart
            for endpoint in candidates:
                self._disconnect()
                self._connect(endpoint)
                try:
                    async with asyncio.timeout(min(MOVE_PROBE_S, self.timeout)):
                        await self.status()
                except (MeshUnreachable, RequestFailed, TimeoutError):
                    continue
                if not self._lost:
                    return True  # another node, or the lost one back after a restart
            return False

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """This node's trace events, one batch at a time (`{"node", "events",
        "dropped"}`, see docs/protocol.md), until the iterator is closed. The
        subscription's lease is renewed while iterating; a node that stops
        answering raises `MeshUnreachable`."""
        stream = self._events = _Stream()
        try:
            await self.request("SUBSCRIBE")
            renew_at = time.monotonic() + LEASE_S / 3
            while True:
                while not stream.messages:
                    stream.arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, renew_at - time.monotonic())):
                            await stream.arrived.wait()
                    if time.monotonic() >= renew_at:
                        await self.request("SUBSCRIBE")
                        renew_at = time.monotonic() + LEASE_S / 3
                batch = stream.messages.popleft()
                yield {"node": batch["node"], "events": batch["events"], "dropped": batch["dropped"]}
        finally:
            self._events = None
            if self._channel is not None:
                with contextlib.suppress(MeshUnreachable):
                    self._send("UNSUBSCRIBE")

    async def run(self, spec: str | None = None, input: str = "", *, source: str = "workflow",
                  run_id: str | None = None, resume: bool = False, attach: bool = False
                  ) -> AsyncIterator[dict[str, Any]]:
        """Start a workflow run (`spec` is the TOML text) on this node, or `resume`/`attach` to run
        `run_id`, and stream its events (docs/workflows.md) until the final `done` or `error`. An invalid
        spec or unknown run raises `RequestFailed`. If the node is lost once the run began, this client moves to
        another live node and attaches there (the run's replica holder adopts it): one `failover` event of kind
        `orchestrator`, then the adopter's events."""
        run_id = run_id or uuid.uuid4().hex[:12]
        stream = self._runs.setdefault(run_id, _Stream())
        ref = next(self._ids)
        self._stream_refs[ref] = stream  # an ERROR answering the RUN (bad spec, unknown run) ends this stream
        began = False
        follows = 0  # times this stream attached again after its run moved (bounded)
        try:
            self._send("RUN", ref, run_id=run_id, spec=spec, source=source, input=input,
                       resume=resume or None, attach=attach or None)
            connection = self._connection
            self._learn_endpoints()
            while True:
                moved: str | None = None
                try:
                    reply = await self._next_for_task(stream)
                except MeshUnreachable as exc:
                    lost = self.endpoint
                    if not began or self._refused or not await self._move_off(connection):
                        raise
                    moved = str(exc)
                else:
                    lost = self.endpoint
                    moved = _run_moved(reply) if began and follows < MAX_RUN_FOLLOWS else None
                    if moved is not None:
                        follows += 1
                        await asyncio.sleep(RUN_FOLLOW_WAIT_S)  # an adoption in progress settles
                if moved is not None:
                    stream.messages.clear()
                    self._stream_refs.pop(ref, None)
                    ref = next(self._ids)
                    self._stream_refs[ref] = stream
                    self._send("RUN", ref, run_id=run_id, attach=True)
                    connection = self._connection
                    yield {"type": "failover", "kind": "orchestrator", "run_id": run_id, "from": lost,
                           "to": self.endpoint, "reason": moved}
                    continue
                if reply.type == "ERROR":
                    raise RequestFailed(reply["code"], reply["message"])
                event = dict(reply["event"])
                began = True
                yield event
                if event.get("type") in ("done", "error"):
                    return
        finally:
            self._runs.pop(run_id, None)
            self._stream_refs.pop(ref, None)

    async def runs(self) -> list[dict[str, Any]]:
        """The workflow runs this node orchestrated, newest first."""
        return list((await self.request("GET_RUNS"))["runs"])

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a run: its stream then ends with `done` (cancelled)."""
        self._send("CANCEL_RUN", run_id=run_id)

    def chat(self, messages: Sequence[dict[str, str]], **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """A chat (`[{"role": "user", "content": ...}, ...]`), streamed like `submit`."""
        return self.submit("", messages=messages, **kwargs)

    async def cancel(self, task_id: str) -> None:
        """Ask the node to cancel a task; its stream then ends with `done` (cancelled)."""
        self._send("CANCEL", task_id=task_id)

    async def _next_for_task(self, stream: _Stream) -> Message:
        """The task's next message. A task may rightly be silent for long (queued, a long prompt), so
        silence alone is no failure: halfway through `timeout` without a word from the node, a GET_STATUS
        asks whether it is there (its reply counts as a word); a node silent for the whole `timeout` is
        unreachable. So a stream never waits more than `timeout` on a node that is gone."""
        waiting_since = time.monotonic()
        probed_at = float("-inf")
        while not stream.messages:
            if self._refused:
                raise MeshUnreachable(self.endpoint, self.timeout, self._refused)
            if self._lost:
                raise NodeLost(self.endpoint)
            heard = max(self._heard_at, waiting_since)
            now = time.monotonic()
            if now - heard >= self.timeout:
                raise MeshUnreachable(self.endpoint, self.timeout, self._refused)
            probe_at = heard + self.timeout * _PROBE_AFTER
            if now >= probe_at and probed_at < heard:
                self._send("GET_STATUS")  # the reply matches no request: it only refreshes `_heard_at`
                probed_at = now
            wake_at = probe_at if probed_at < heard else heard + self.timeout
            stream.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    await stream.arrived.wait()
        return stream.messages.popleft()

    # -- socket --------------------------------------------------------------------------

    def _send(self, type_: str, id: int | None = None, **fields: Any) -> Message:
        if self._channel is None:
            raise RuntimeError("client is not open: use `async with AsyncClient(...)`")
        message = protocol.make(type_, src=self.client_id, id=next(self._ids) if id is None else id, **fields)
        if self._channel.send([protocol.encode(message)]) is not Sent.OK:
            raise MeshUnreachable(self.endpoint, self.timeout, self._refused)  # queue full: it has not answered
        return message

    def _on_frames(self, frames: list[bytes]) -> None:
        self._heard_at = time.monotonic()
        try:
            messages = protocol.decode_frame(frames[-1])
        except ProtocolError:
            return
        for message in messages:
            if message.type == "EVENTS" and message.re is None:
                if self._events is not None:
                    self._events.messages.append(message)
                    self._events.arrived.set()
                continue
            if message.type == "RUN_EVENT":
                stream = self._runs.get(message["run_id"])
            elif message.re is not None and message.re in self._stream_refs:
                stream = self._stream_refs.pop(message.re)
            else:
                task_id = message.get("task_id")
                stream = self._streams.get(task_id) if isinstance(task_id, str) else None
            if stream is not None:
                stream.messages.append(message)
                stream.arrived.set()
                continue
            future = self._pending.get(message.re) if message.re is not None else None
            if future is not None and not future.done():
                future.set_result(message)


MAX_RUN_FOLLOWS = 8
"""Times one run stream attaches again because its run moved (another node adopted it, or it was not found for a
moment while an adoption was under way) before it gives up with the last answer."""
RUN_FOLLOW_WAIT_S = 0.5


def _run_moved(reply: Message) -> str | None:
    """Why a run stream should attach again instead of ending: its run moved to another node (the old owner or a
    replica's holder says so), the node forwarding to the run's holder lost it, or the run is not found while an
    adoption is under way. None for a real ending."""
    if reply.type == "ERROR":
        if reply["code"] == "run_unknown" or (reply["code"] == "peer_dead" and reply["retryable"]):
            return f"{reply['code']}: {reply['message']}"
        return None
    event = reply["event"]
    if event.get("type") == "error" and event.get("code") == "run_moved":
        return str(event.get("message"))
    return None


class Client:
    """The same, for synchronous code: `with Client(endpoint) as client: client.peers()`."""

    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT_S, mesh_key: MeshKey | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = AsyncClient(endpoint, timeout, mesh_key)

    def __enter__(self) -> Client:
        self._loop.run_until_complete(self._async.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._async.close())
            self._loop.close()

    def peers(self) -> list[dict[str, Any]]:
        return self._loop.run_until_complete(self._async.peers())

    def status(self) -> dict[str, Any]:
        return self._loop.run_until_complete(self._async.status())

    def cancel(self, task_id: str) -> None:
        self._loop.run_until_complete(self._async.cancel(task_id))

    def chat(self, messages: Sequence[dict[str, str]], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Stream a chat's events; see `AsyncClient.submit` for the arguments."""
        return self.submit("", messages=messages, **kwargs)

    def submit(self, prompt: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Stream a task's events; see `AsyncClient.submit` for the arguments."""
        stream = self._async.submit(prompt, **kwargs)
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run_until_complete(stream.aclose())

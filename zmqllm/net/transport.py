"""ZeroMQ sockets: the node's ROUTER, one DEALER per peer, and sends that never block.

Every send is non-blocking and says what happened, because a silent drop is the
one thing the mesh must never do: a ROUTER without ROUTER_MANDATORY throws away
messages for unknown or full peers without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import socket
import time
from collections import deque
from collections.abc import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from zmqllm.net.keys import MeshKey
from zmqllm.core.protocol import MAX_MESSAGE_BYTES, batch_frame

ROUTER_SEND_HWM = 1_000
"""Frames queued per connection on the ROUTER before a send reports `FULL` (a frame
is a batch of at most `BATCH_LIMIT` messages, so this bounds memory too)."""
BATCH_LIMIT = 256
"""Most messages the mailer puts in one frame."""
DEALER_SEND_HWM = 1_000
"""Messages queued to one peer on its DEALER (membership and control traffic)."""
DRAIN_BUDGET_S = 0.01
"""Longest one drain of a socket runs before it lets other callbacks in (heartbeats above all): a frame can carry
thousands of messages, so a count of frames alone does not bound it, and a loop busy relaying a flood for longer
than the dead-detection time got this node declared dead by its peers."""
OUTBOX_LIMIT_BYTES = 16 * 1024 * 1024
"""Bytes held for one receiver whose queue is full before sends to it report `FULL`."""
OUTBOX_RETRY_S = 0.002
"""How soon a backed-up outbox tries again."""
SHUTDOWN_LINGER_MS = 500
"""How long closing sockets may take to flush BYE and final errors."""
ROUTER_RECV_HWM = 64
"""Frames libzmq buffers from one connection before it stops reading that connection's TCP stream: with
frames capped at `MAX_MESSAGE_BYTES`, one sender cannot make a node hold gigabytes."""
log = logging.getLogger(__name__)
_ENDPOINT = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:]+\]|[^:/\s]+):(?P<port>\d{1,5}|\*)$|^ipc://\S+$")


class Sent(enum.Enum):
    """Outcome of a non-blocking send."""

    OK = "ok"
    FULL = "full"  # the receiver is not reading: its queue is at the high-water mark
    UNREACHABLE = "unreachable"  # no such connection (peer or client gone)


class Monitor:
    """A socket's connection events (the `zmq.EVENT_*` bits in `events`), each handed to `handle` on the
    loop as its event number. Close it before the socket it watches."""

    def __init__(self, sock: zmq.Socket, events: int, handle: Callable[[int], None]) -> None:
        self._watched = sock
        self._channel = Channel(sock.get_monitor_socket(events),
                                lambda frames: handle(parse_monitor_message(frames)["event"]))

    def close(self) -> None:
        self._watched.disable_monitor()
        self._channel.close()


def is_endpoint(text: str) -> bool:
    """Whether `text` is an endpoint this mesh dials (`tcp://HOST:PORT` or `ipc://PATH`)."""
    match = _ENDPOINT.match(text)
    if match is None:
        return False
    port = match.group("port")
    return port is None or port == "*" or int(port) <= 65535


def bind_router(ctx: zmq.Context, endpoint: str, key: MeshKey | None = None) -> tuple[zmq.Socket, str]:
    """Bind the node's ROUTER (a CURVE server with `key`); port 0 or `*` picks a
    free port. Returns the socket and the endpoint it really listens on."""
    sock = ctx.socket(zmq.ROUTER)
    if key is not None:
        key.serve(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a peer reconnecting under its id takes over
    sock.setsockopt(zmq.SNDHWM, ROUTER_SEND_HWM)
    sock.setsockopt(zmq.RCVHWM, ROUTER_RECV_HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_MESSAGE_BYTES)  # bigger still: drop the connection
    sock.setsockopt(zmq.LINGER, 0)
    bindable = re.sub(r":0$", ":*", endpoint)
    try:
        sock.bind(bindable)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise OSError(f"cannot bind {endpoint}: {exc.strerror}") from None
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def connect_dealer(ctx: zmq.Context, endpoint: str, identity: str, key: MeshKey | None = None) -> zmq.Socket:
    """A DEALER to one peer's ROUTER, identified by this node's id so replies route
    back (a CURVE client with `key`)."""
    sock = ctx.socket(zmq.DEALER)
    if key is not None:
        key.dial(sock)
    sock.setsockopt(zmq.ROUTING_ID, identity.encode())
    sock.setsockopt(zmq.SNDHWM, DEALER_SEND_HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


class Channel:
    """A ZeroMQ socket driven by the asyncio loop: reads handed to `handle`, sends
    that never block.

    The socket's FD is edge-triggered: it signals that libzmq has work, not that
    a message waits, and a send can swallow the signal for a message that just
    arrived. So the channel drains until `zmq.Again`, and after every send
    schedules one more drain (at most one per loop turn) instead of trusting
    the FD. Plain sync sockets, no future per message: that keeps a token's
    relay cost at a few microseconds. A handler that raises is logged and the
    drain goes on: an exception must not cost the socket its wake-up."""

    def __init__(self, sock: zmq.Socket, handle: Callable[[list[bytes]], None], batch: int = 256) -> None:
        self.socket = sock
        self._handle = handle
        self._batch = batch
        self._loop = asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self._drain_scheduled = False
        self._loop.add_reader(self._fd, self._drain)
        self._schedule_drain()

    def send(self, frames: list[bytes]) -> Sent:
        """Send without blocking; report a full queue or a vanished receiver."""
        try:
            for frame in frames[:-1]:
                self.socket.send(frame, zmq.DONTWAIT | zmq.SNDMORE)
            self.socket.send(frames[-1], zmq.DONTWAIT)
        except zmq.Again:
            return Sent.FULL
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return Sent.UNREACHABLE
            raise
        finally:
            self._schedule_drain()
        return Sent.OK

    def close(self, linger_ms: int = 0) -> None:
        if not self.socket.closed:
            self._loop.remove_reader(self._fd)
            self.socket.close(linger=linger_ms)

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Read what is queued, `batch` at a time so other callbacks get turns."""
        self._drain_scheduled = False
        if self.socket.closed:
            return
        until = time.monotonic() + DRAIN_BUDGET_S
        for _ in range(self._batch):
            try:
                frames = self.socket.recv_multipart(flags=zmq.DONTWAIT)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except Exception:
                log.exception("error handling a message; going on with the next")
            if self.socket.closed:
                return
            if time.monotonic() > until:
                break
        self._schedule_drain()  # more may be queued: continue next turn


class Outbox:
    """Frames for one receiver, kept in order while its queue is full.

    ZeroMQ's high-water mark is the first buffer; this is the second, bounded
    one: a fast producer (an echo engine, a GPU) can outrun a relay for a
    moment without anything being dropped or reordered. Past `limit`, `send`
    reports `FULL` and the caller decides (cancel the task); `send(..., force=True)`
    still queues — for the one final message that must get through. An
    unreachable receiver drops what was queued for it; a receiver that comes
    back (a reconnecting peer under the same id) is sent to again."""

    def __init__(self, channel: Channel, limit: int = OUTBOX_LIMIT_BYTES,
                 on_empty: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self.limit = limit
        self._pending: deque[list[bytes]] = deque()
        self._bytes = 0
        self._retry: asyncio.TimerHandle | None = None
        self._on_empty = on_empty

    def __len__(self) -> int:
        return len(self._pending)

    def send(self, frames: list[bytes], force: bool = False) -> Sent:
        if not self._pending:
            sent = self.channel.send(frames)
            if sent is not Sent.FULL:
                return sent
        elif self._bytes >= self.limit and not force:
            return Sent.FULL
        self._pending.append(frames)
        self._bytes += len(frames[-1])
        self._schedule_retry()
        return Sent.OK

    def _schedule_retry(self) -> None:
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(OUTBOX_RETRY_S, self._flush)

    def _flush(self) -> None:
        self._retry = None
        while self._pending:
            sent = self.channel.send(self._pending[0])
            if sent is Sent.FULL:
                self._schedule_retry()
                return
            if sent is Sent.UNREACHABLE:
                self._pending.clear()
                self._bytes = 0
                break
            self._bytes -= len(self._pending.popleft()[-1])
        if self._on_empty is not None:
            self._on_empty()

    def cancel(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._pending.clear()
        self._bytes = 0


class Mailer:
    """Everything a ROUTER sends, batched per receiver once per loop turn.

    A relay pays per ZeroMQ message (a libzmq send, often a syscall to wake its
    I/O thread); tokens arriving in a burst leave as one batch frame per
    receiver instead, at no added latency beyond the current loop turn. Order
    per receiver is kept. A receiver that cannot take more (gone, or past its
    outbox bound) is reported once per flush to `on_failure`; a failing
    `on_failure` is logged and never costs other receivers their messages."""

    def __init__(self, channel: Channel, on_failure: Callable[[bytes, Sent], None],
                 limit: int = OUTBOX_LIMIT_BYTES) -> None:
        self.channel = channel
        self.limit = limit
        self._on_failure = on_failure
        self._queued: dict[bytes, list[bytes]] = {}
        self._final: set[bytes] = set()
        self._outboxes: dict[bytes, Outbox] = {}
        self._flush_scheduled = False

    def post(self, identity: bytes, payload: bytes, final: bool = False) -> None:
        """Queue one encoded message; `final` ones pass even a full outbox."""
        self._queued.setdefault(identity, []).append(payload)
        if final:
            self._final.add(identity)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def backlog(self, identity: bytes) -> int:
        """Frames waiting in the receiver's outbox."""
        outbox = self._outboxes.get(identity)
        return len(outbox) if outbox is not None else 0

    def flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        final, self._final = self._final, set()
        for identity, payloads in queued.items():
            try:
                self._deliver(identity, payloads, identity in final)
            except Exception:
                log.exception("error delivering to %r; going on with the other receivers", identity)

    def _deliver(self, identity: bytes, payloads: list[bytes], final: bool) -> None:
        for frame in _batches(payloads):
            sent = self._send(identity, frame, final)
            if sent is not Sent.OK:
                self._on_failure(identity, sent)
                return

    def _send(self, identity: bytes, frame: bytes, force: bool) -> Sent:
        outbox = self._outboxes.get(identity)
        if outbox is None:
            sent = self.channel.send([identity, frame])
            if sent is not Sent.FULL:
                return sent
            outbox = Outbox(self.channel, self.limit, on_empty=lambda: self._outboxes.pop(identity, None))
            self._outboxes[identity] = outbox
        sent = outbox.send([identity, frame], force)
        if not len(outbox):  # it went straight through: nothing is held for this receiver any more
            self._outboxes.pop(identity, None)
        return sent


def _batches(payloads: list[bytes]) -> list[bytes]:
    """Batch frames within the message-count and size limits."""
    frames, group, size = [], [], 0
    for payload in payloads:
        if group and (len(group) >= BATCH_LIMIT or size + len(payload) > MAX_MESSAGE_BYTES // 2):
            frames.append(batch_frame(group))
            group, size = [], 0
        group.append(payload)
        size += len(payload)
    if group:
        frames.append(batch_frame(group))
    return frames


def advertised_endpoint(bound: str, advertise: str | None) -> str:
    """The endpoint peers should dial: `advertise` if given, else the bound one with a
    wildcard host replaced by this machine's address."""
    if advertise:
        return advertise
    match = re.match(r"^tcp://(0\.0\.0\.0|\*|\[::\]):(\d+)$", bound)
    if match is None:
        return bound
    return f"tcp://{machine_address()}:{match.group(2)}"


def machine_address() -> str:
    """This machine's address as other machines see it: the source address of its
    default route, else what its host name resolves to, else loopback. The name
    alone is not enough: Debian-style /etc/hosts maps it to 127.0.1.1."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a UDP connect only picks a route: nothing is sent
        host = probe.getsockname()[0]
        if not host.startswith("127.") and host != "0.0.0.0":
            return str(host)
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def is_loopback(endpoint: str) -> bool:
    """Whether a bind address keeps traffic on this machine."""
    if endpoint.startswith("ipc://"):
        return True
    match = _ENDPOINT.match(endpoint)
    host = match.group("host") if match else ""
    return host in ("localhost", "[::1]") or host.startswith("127.")

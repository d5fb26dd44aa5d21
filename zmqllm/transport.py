"""ZeroMQ sockets: the node's ROUTER, one DEALER per peer, and sends that never block.

Every send is non-blocking and says what happened, because a silent drop is the
one thing the mesh must never do: a ROUTER without ROUTER_MANDATORY throws away
messages for unknown or full peers without a word.
"""

from __future__ import annotations

import enum
import re
import socket

import zmq
import zmq.asyncio

from zmqllm.protocol import MAX_MESSAGE_BYTES

ROUTER_SEND_HWM = 10_000
"""Messages queued per connection on the ROUTER before a send reports `FULL`."""
DEALER_SEND_HWM = 1_000
"""Messages queued to one peer on its DEALER (membership and control traffic)."""
SHUTDOWN_LINGER_MS = 500
"""How long closing sockets may take to flush BYE and final errors."""
_ENDPOINT = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:]+\]|[^:/\s]+):(?P<port>\d{1,5}|\*)$|^ipc://\S+$")


class Sent(enum.Enum):
    """Outcome of a non-blocking send."""

    OK = "ok"
    FULL = "full"  # the receiver is not reading: its queue is at the high-water mark
    UNREACHABLE = "unreachable"  # no such connection (peer or client gone)


def is_endpoint(text: str) -> bool:
    """Whether `text` is an endpoint this mesh dials (`tcp://HOST:PORT` or `ipc://PATH`)."""
    match = _ENDPOINT.match(text)
    if match is None:
        return False
    port = match.group("port")
    return port is None or port == "*" or int(port) <= 65535


def bind_router(ctx: zmq.asyncio.Context, endpoint: str) -> tuple[zmq.asyncio.Socket, str]:
    """Bind the node's ROUTER; port 0 or `*` picks a free port. Returns the socket and
    the endpoint it really listens on."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a peer reconnecting under its id takes over
    sock.setsockopt(zmq.SNDHWM, ROUTER_SEND_HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_MESSAGE_BYTES)  # bigger still: drop the connection
    sock.setsockopt(zmq.LINGER, 0)
    bindable = re.sub(r":0$", ":*", endpoint)
    try:
        sock.bind(bindable)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise OSError(f"cannot bind {endpoint}: {exc.strerror}") from None
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def connect_dealer(ctx: zmq.asyncio.Context, endpoint: str, identity: str) -> zmq.asyncio.Socket:
    """A DEALER to one peer's ROUTER, identified by this node's id so replies route back."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, identity.encode())
    sock.setsockopt(zmq.SNDHWM, DEALER_SEND_HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def try_send(sock: zmq.asyncio.Socket, frames: list[bytes]) -> Sent:
    """Send without blocking; report a full queue or a vanished receiver."""
    future = sock.send_multipart(frames, flags=zmq.DONTWAIT, copy=False)
    error = future.exception() if future.done() else None
    if error is None:
        return Sent.OK
    if isinstance(error, zmq.Again):
        return Sent.FULL
    if isinstance(error, zmq.ZMQError) and error.errno == zmq.EHOSTUNREACH:
        return Sent.UNREACHABLE
    raise error


def advertised_endpoint(bound: str, advertise: str | None) -> str:
    """The endpoint peers should dial: `advertise` if given, else the bound one with a
    wildcard host replaced by this machine's address."""
    if advertise:
        return advertise
    match = re.match(r"^tcp://(0\.0\.0\.0|\*|\[::\]):(\d+)$", bound)
    if match is None:
        return bound
    try:
        host = socket.gethostbyname(socket.gethostname())
    except OSError:
        host = "127.0.0.1"
    return f"tcp://{host}:{match.group(2)}"


def is_loopback(endpoint: str) -> bool:
    """Whether a bind address keeps traffic on this machine."""
    if endpoint.startswith("ipc://"):
        return True
    match = _ENDPOINT.match(endpoint)
    host = match.group("host") if match else ""
    return host in ("localhost", "[::1]") or host.startswith("127.")

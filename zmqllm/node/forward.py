"""Any node answers for any task: requests about a task or run this node does not hold go to the node that does.

`zmqllm cancel ID`, `zmqllm result ID` and `zmqllm run --attach ID` may reach any node of the mesh. When the node
asked holds nothing under that id (or only a copy a crash cut short), it sends LOOKUP to its live peers, waits
(bounded) for their FOUND answers (`core.lookup` weighs them), and forwards the client's request to the best
holder over a DEALER of its own, as a client would, relaying every reply back under the client's message id.
The forwarded request says `local`, so the holder answers from what it has and never forwards it again (no
loops). Nobody holding it: the node answers as it would have (`task_unknown`, its own interrupted copy).

One lookup serves every client asking about the same id meanwhile; the number of lookups and of forwarded
requests in flight is bounded, so a client sending CANCELs for made-up ids cannot make a node flood the mesh.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from zmqllm.core import protocol
from zmqllm.core.lookup import KINDS, Kind, Lookup
from zmqllm.core.protocol import Message, ProtocolError
from zmqllm.net.transport import Channel, Monitor, Sent, connect_dealer

if TYPE_CHECKING:
    from zmqllm.node.roles import ForwardHost

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 2.0
"""How long the node asked waits for its peers' answers (a frozen peer never answers): then the best so far."""
MAX_LOOKUPS = 64
"""Lookups in flight at once; one more is answered `busy` (retryable)."""
MAX_PROXIES = 256
"""Forwarded requests in flight at once (each holds a socket); one more is answered `busy`."""
REQUEST_IDLE_S = 60.0
"""A forwarded cancel or result whose holder says nothing this long ends with an error (a stream does not)."""

Fallback = Callable[[], None]
"""What the node asked does when no peer holds the id: answer as it would have without asking."""
Settled = Callable[[Lookup], None]
"""Called with a lookup's answers once it is settled (node-internal searches: adopting a run)."""


@dataclass
class _Waiter:
    client: bytes
    message: Message
    fallback: Fallback


@dataclass
class _Search:
    lookup: Lookup
    timer: asyncio.TimerHandle
    waiters: list[_Waiter | Settled] = field(default_factory=list)


@dataclass
class _Proxy:
    """One forwarded request: this node's DEALER to the holder, and the client it answers."""

    identity: bytes
    holder: str
    client: bytes
    ref: int
    stream: bool
    channel: Channel
    monitor: Monitor
    sent_id: int
    idle: asyncio.TimerHandle | None = None


class Forwarder:
    """The lookups and forwarded requests of one node."""

    def __init__(self, node: ForwardHost) -> None:
        self.node = node
        self.searches: dict[tuple[Kind, str, str], _Search] = {}
        """By (kind, key, the node left out of the asking: "" for none)."""
        self.proxies: dict[bytes, _Proxy] = {}
        self._ids = itertools.count(1)

    # -- the node asked ----------------------------------------------------------------------

    def forward(self, client: bytes, message: Message, kind: Kind, key: str, fallback: Fallback) -> None:
        """Find who holds `key` and pass `message` on to it; `fallback` when nobody does."""
        if message.get("local") or self.node.table is None:
            fallback()
            return
        waiter = _Waiter(client, message, fallback)
        if not self._join(kind, key, waiter):
            self.node.reply_error(client, "busy", f"{self.node.settings.name} is looking for {MAX_LOOKUPS} ids "
                                  "already", re=message.id, retryable=True)

    def search(self, kind: Kind, key: str, settled: Settled, leave_out: str = "") -> None:
        """Ask the live peers (but `leave_out`) what they hold of `key`; `settled` gets the weighed answers
        (also when no peer is there to ask, or the lookup limit is reached: then with no answers)."""
        if not self._join(kind, key, settled, leave_out):
            settled(Lookup(kind, key, frozenset()))

    def _join(self, kind: Kind, key: str, waiter: _Waiter | Settled, leave_out: str = "") -> bool:
        """Add a waiter to the lookup for `key`, starting one if none is going. False at the limit."""
        node = self.node
        search = self.searches.get((kind, key, leave_out))
        if search is None:
            peers = node.table.live_peers() if node.table is not None else []
            asked = frozenset(peer.node_id for peer in peers
                              if peer.node_id != leave_out and node.link_for(peer.node_id))
            if asked and len(self.searches) >= MAX_LOOKUPS:
                return False
            timer = asyncio.get_running_loop().call_later(LOOKUP_TIMEOUT_S, self._settle, kind, key, leave_out)
            search = self.searches[(kind, key, leave_out)] = _Search(Lookup(kind, key, asked), timer)
            for node_id in asked:
                if node.send_to_peer(node_id, "LOOKUP", kind=kind, key=key) is not Sent.OK:
                    search.lookup.give_up_on(node_id)
        search.waiters.append(waiter)
        if search.lookup.settled():
            self._settle(kind, key, leave_out)
        return True

    def on_found(self, message: Message) -> None:
        """A peer's answer (on this node's link to it, so `src` is that peer)."""
        kind, key = message["kind"], message["key"]
        if kind not in KINDS:
            return
        for (k, name, leave_out), search in list(self.searches.items()):  # a plain and a fencing lookup may share it
            if k == kind and name == key and search.lookup.answer(message.src, message["state"] if message["has"]
                                                                  else None, message.get("epoch")):
                if search.lookup.settled():
                    self._settle(kind, key, leave_out)

    def peer_lost(self, node_id: str) -> None:
        """A peer died or left: it answers no lookup, and requests forwarded to it end (retryable)."""
        for kind, key, leave_out in list(self.searches):
            search = self.searches[(kind, key, leave_out)]
            search.lookup.give_up_on(node_id)
            if search.lookup.settled():
                self._settle(kind, key, leave_out)
        for proxy in [p for p in self.proxies.values() if p.holder == node_id]:
            self._fail(proxy, "the node holding it was lost")

    def client_failed(self, client: bytes) -> None:
        """A client went away: what was forwarded for it stops (its holder sees a client leave)."""
        for proxy in [p for p in self.proxies.values() if p.client == client]:
            self._close(proxy)
        for search in self.searches.values():
            search.waiters = [w for w in search.waiters if not isinstance(w, _Waiter) or w.client != client]

    def close_all(self) -> None:
        for search in self.searches.values():
            search.timer.cancel()
        self.searches.clear()
        for proxy in list(self.proxies.values()):
            self._close(proxy)

    def _settle(self, kind: Kind, key: str, leave_out: str = "") -> None:
        search = self.searches.pop((kind, key, leave_out), None)
        if search is None:
            return
        search.timer.cancel()
        holder = search.lookup.holder()
        for waiter in search.waiters:
            if not isinstance(waiter, _Waiter):
                waiter(search.lookup)
            elif holder is None or search.lookup.holding_of(holder) == "replica" and not _attaching(waiter):
                waiter.fallback()
            else:
                self._open(waiter, holder, kind)

    def _open(self, waiter: _Waiter, holder: str, kind: Kind) -> None:
        node = self.node
        peer = node.table.get(holder) if node.table is not None else None
        if peer is None:
            waiter.fallback()
            return
        if len(self.proxies) >= MAX_PROXIES:
            node.reply_error(waiter.client, "busy", f"{node.settings.name} forwards {MAX_PROXIES} requests already",
                             re=waiter.message.id, retryable=True)
            return
        identity = f"fwd-{node.node_id}-{next(self._ids)}"
        sock = connect_dealer(node.ctx, peer.identity.endpoint, identity, node.settings.mesh_key)
        stream = waiter.message.type == "RUN"
        sent_id = next(self._ids)
        proxy = _Proxy(identity.encode(), holder, waiter.client, waiter.message.id, stream,
                       Channel(sock, lambda frames: self._on_holder_frames(proxy, frames)),
                       Monitor(sock, zmq.EVENT_DISCONNECTED, lambda event: self._fail(proxy, "the connection closed")),
                       sent_id)
        self.proxies[proxy.identity] = proxy
        request = protocol.make(waiter.message.type, src=identity, id=sent_id,
                                **{**waiter.message.fields, "local": True})
        log.info("%s %s: forwarding %s to %s, which holds it", kind, _key_of(waiter.message),
                 waiter.message.type, peer.name)
        proxy.channel.send([protocol.encode(request)])
        self._arm_idle(proxy)

    # -- relaying the holder's answers --------------------------------------------------------

    def _on_holder_frames(self, proxy: _Proxy, frames: list[bytes]) -> None:
        if proxy.identity not in self.proxies:
            return
        try:
            messages = protocol.decode_frame(frames[-1])
        except ProtocolError as exc:
            self._fail(proxy, f"it sent a bad frame ({exc.message})")
            return
        for message in messages:
            final = _is_final(message)
            re = proxy.ref if message.re == proxy.sent_id else None
            self.node.reply(proxy.client, message.type, re=re, final=final, **message.fields)
            if final:
                self._close(proxy)
                return
        self._arm_idle(proxy)

    def _arm_idle(self, proxy: _Proxy) -> None:
        if proxy.stream:
            return
        if proxy.idle is not None:
            proxy.idle.cancel()
        proxy.idle = asyncio.get_running_loop().call_later(REQUEST_IDLE_S, self._fail, proxy,
                                                           f"it said nothing for {REQUEST_IDLE_S:g} s")

    def _fail(self, proxy: _Proxy, why: str) -> None:
        if proxy.identity not in self.proxies:
            return
        peer = self.node.table.get(proxy.holder) if self.node.table is not None else None
        name = peer.name if peer is not None else proxy.holder
        self.node.reply_error(proxy.client, "peer_dead", f"forwarded to {name}, which holds it, but {why}: ask "
                              "again", re=proxy.ref, retryable=True)
        self._close(proxy)

    def _close(self, proxy: _Proxy) -> None:
        if self.proxies.pop(proxy.identity, None) is None:
            return
        if proxy.idle is not None:
            proxy.idle.cancel()
        proxy.monitor.close()
        proxy.channel.close()


def _is_final(message: Message) -> bool:
    """The holder's last word for a forwarded request: a task's end, a result, an error, a run's end."""
    if message.type in ("DONE", "ERROR", "RESULT"):
        return True
    return message.type == "RUN_EVENT" and message["event"].get("type") in ("done", "error")


def _attaching(waiter: _Waiter) -> bool:
    """A client attaching to a run may wait at its replica's holder for the adoption; other requests may not
    (a holder cannot cancel a run it does not run)."""
    return waiter.message.type == "RUN"


def _key_of(message: Message) -> Any:
    return message.get("task_id") or message.get("run_id")

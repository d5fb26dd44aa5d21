"""The daemon: asyncio glue between sockets, the pure modules and the engine.

One ROUTER takes everything addressed to this node (peers' DEALERs and
clients); one DEALER per peer carries what this node says to it. Decisions are
made elsewhere: liveness in `membership`, placement in `scheduler`, a task's
story in `tasks` (through `origin`), running work in `executor`. This module
reads frames, hands them over, and sends what comes back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from zmqllm import __version__
from zmqllm.core.metrics import NodeStats
from zmqllm.core import protocol
from zmqllm.engines.base import Engine
from zmqllm.core.events import FLUSH_INTERVAL_S, EventHub
from zmqllm.node.datadir import DataDirLock
from zmqllm.node.executor import Executor
from zmqllm.node.forward import Forwarder
from zmqllm.node.journal import CHECKPOINT_INTERVAL_S, JOURNAL_FILE, Journal, Retention
from zmqllm.net.keys import HANDSHAKE_FAILED, MeshKey, handshake_failure
from zmqllm.core.membership import Identity, Liveness, Load, NameTaken, PeerTable, Transition, new_endpoints
from zmqllm.core.ratelimit import Quiet
from zmqllm.core.scheduler import CACHE_AWARE
from zmqllm.core.swim import SwimConfig
from zmqllm.node import dispatch
from zmqllm.node.loops import guarded
from zmqllm.node.orchestrator import Orchestrator
from zmqllm.node.origin import Origin
from zmqllm.core.protocol import Message, ProtocolError
from zmqllm.node.remote import RemoteTasks
from zmqllm.node.swim_membership import SwimMembership
from zmqllm.net.transport import (
    OUTBOX_LIMIT_BYTES,
    SHUTDOWN_LINGER_MS,
    Channel,
    Mailer,
    Monitor,
    Sent,
    advertised_endpoint,
    bind_router,
    connect_dealer,
    is_endpoint,
    is_loopback,
)

log = logging.getLogger(__name__)

SWIM_TYPES = frozenset(kind for kind in protocol.MESSAGE_FIELDS if kind.startswith("SWIM_"))
DRAIN_BATCH = 256
"""Messages read from one socket before giving other coroutines a turn."""
LIVENESS_CHECKS_PER_INTERVAL = 4
"""Liveness is checked this many times per heartbeat interval, so a silent peer is
declared dead within a quarter interval of its deadline, not a whole one."""
REFUSED_LOG_INTERVAL_S = 60.0
"""Refused handshakes, bad frames and forbidden messages are logged at once, then at most this often per
sender (with their count): a flood of them must not fill the disk."""
MAX_LINKS = 1024
"""Peer endpoints this node keeps a DEALER to; gossip naming more is not followed."""
MAX_DIALS_PER_GOSSIP = 64
"""New endpoints one PEERS or WELCOME may make this node dial."""
UNANSWERED_LINK_INTERVALS = 20.0
"""Heartbeat intervals a dialled endpoint (not a seed) may stay silent before its link is closed."""


class FatalNodeError(Exception):
    """The node cannot go on (its name is taken, its address is in use)."""


@dataclass
class Link:
    """This node's DEALER to one peer endpoint."""

    endpoint: str
    channel: Channel
    node_id: str | None = None
    monitor: Monitor | None = None
    """Connection events of the DEALER: a closed connection is a lost executor at once."""
    refused: bool = False
    """The peer refused our security handshake (said once in the log)."""
    dialled_at: float = 0.0
    seed: bool = False
    """An endpoint the operator named (`peers`): never closed, whatever happens to the node behind it."""
    used_at: float = 0.0
    """When a message last went or came on it (`membership = "swim"` closes idle links outside the view)."""


@dataclass(frozen=True)
class NodeSettings:
    """What the daemon needs beyond its engine (built from `config.NodeConfig`)."""

    name: str
    bind: str
    peers: tuple[str, ...] = ()
    advertise: str | None = None
    liveness: Liveness = Liveness()
    queue_limit: int = 64
    send_buffer_bytes: int = OUTBOX_LIMIT_BYTES
    """Bytes held for one receiver that stopped reading before its tasks are cut off."""
    data_dir: Path | None = None
    """Where the task journal lives; None keeps tasks in memory only."""
    mesh_key: MeshKey | None = None
    """CURVE on every socket, admitting only holders of the same key (`zmqllm.net.keys`)."""
    journal_retention: Retention = Retention()
    """How long finished tasks stay in the journal (age and size)."""
    routing: str = CACHE_AWARE
    """The origin's routing policy (`zmqllm.core.scheduler.ROUTING_POLICIES`)."""
    membership: str = "heartbeat"
    """Who judges liveness: `heartbeat` (every node beats to every other) or `swim` (probes and gossip,
    links to the active view only: node/swim_membership.py)."""
    swim: SwimConfig = SwimConfig()


class Node:
    """One daemon of the mesh."""

    def __init__(self, settings: NodeSettings, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.node_id = secrets.token_hex(8)
        self.started_at = clock()
        self.executor = Executor(engine, settings.queue_limit)
        self.ctx = zmq.Context()
        self.router: Channel | None = None
        self.mailer: Mailer | None = None
        self.endpoint = ""
        self.table: PeerTable | None = None
        self.links: dict[str, Link] = {}
        self.origin = Origin(self, settings.routing)
        self.remote = RemoteTasks(self)
        self.orchestrator = Orchestrator(self)
        self.forwarder = Forwarder(self)
        self.events = EventHub()
        self.journal: Journal | None = None
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()
        self._fatal: FatalNodeError | None = None
        self._closing = False
        self.stats = NodeStats()
        """Counters for /metrics (core/metrics.py): read only when scraped."""
        self.dropped_frames = 0
        """Frames that were not valid messages (or came from a peer that no longer had a link)."""
        self.refused_messages = 0
        """Valid messages refused for their sender: a node-only message from another connection."""
        self._authenticator: Any = None
        self._router_monitor: Monitor | None = None
        self.refused_handshakes = 0
        """Incoming connections that failed the security handshake (mesh keys that differ)."""
        self._quiet = Quiet(REFUSED_LOG_INTERVAL_S)
        self._router_rules = dispatch.router_rules(self)
        self.swim = SwimMembership(self, settings.swim, settings.peers) if settings.membership == "swim" else None

    # -- lifecycle --------------------------------------------------------------

    async def run(self, on_ready: Callable[[Node], None] | None = None) -> None:
        """Serve until `stop()` (or SIGTERM/SIGINT when installed); say BYE on the way out."""
        data_lock: DataDirLock | None = None
        if self.settings.data_dir is not None:
            data_lock = DataDirLock.acquire(self.settings.data_dir)  # one daemon per data dir, before its journal
            self.journal = Journal(self.settings.data_dir / JOURNAL_FILE, self.settings.journal_retention)
            interrupted = self.journal.interrupt_unfinished(self.settings.name)
            if interrupted:
                log.warning("%d task(s) were unfinished when this node last stopped: marked interrupted", interrupted)
            runs = self.journal.interrupt_runs()
            if runs:
                log.warning("%d workflow run(s) were going when this node last stopped: resume them with "
                            "zmqllm run --resume RUN_ID (zmqllm runs lists them)", runs)
        key = self.settings.mesh_key
        if key is not None:
            self._authenticator = key.admit(self.ctx)  # before binding: no ZAP handler admits anyone
        router, bound = bind_router(self.ctx, self.settings.bind, key)
        self.router = Channel(router, self._on_router_frames, DRAIN_BATCH)
        self._router_monitor = Monitor(router, HANDSHAKE_FAILED, self._on_refused_handshake)
        self.mailer = Mailer(self.router, self._undeliverable, self.settings.send_buffer_bytes)
        self.endpoint = advertised_endpoint(bound, self.settings.advertise)
        if not is_loopback(bound) and is_loopback(self.endpoint):
            log.warning("bound %s but advertising %s, which other machines cannot dial: set advertise to this "
                        "machine's address", bound, self.endpoint)
        if key is None and not is_loopback(bound):
            log.warning("bound %s without a mesh key (allow_plaintext): traffic is plaintext and anyone who can "
                        "reach it can use it (zmqllm keys new FILE, then mesh_key = FILE on every node)", bound)
        self.table = PeerTable(self._own_identity(), self.settings.liveness, self.clock(),
                               judge_by_silence=self.swim is None)
        interval = self.settings.liveness.interval
        rounds: list[tuple[str, Callable[[], float], float]] = [
            ("heartbeat", self._heartbeat_round, interval),
            ("liveness", self._liveness_round, interval / LIVENESS_CHECKS_PER_INTERVAL),
            ("trace", self._events_round, FLUSH_INTERVAL_S),
            ("journal checkpoint", self._checkpoint_round, CHECKPOINT_INTERVAL_S)]
        if self.swim is not None:
            rounds.append(("swim", self.swim.round, interval))
        self._next_beat = self.clock()
        loops = [asyncio.create_task(guarded(name, round_, self._give_up, self.clock, retry), name=name)
                 for name, round_, retry in rounds]
        for seed in self.settings.peers:
            self.dial(seed, seed=True)
        if self.swim is not None:
            self.swim.start()
        if on_ready:
            on_ready(self)
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown(loops)
            if data_lock is not None:
                data_lock.release()
        if self._fatal is not None:
            raise self._fatal

    def stop(self) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    async def _shutdown(self, loops: list[asyncio.Task[None]]) -> None:
        """Stop listening first (a HELLO answered after our BYE would make peers
        think we rejoined), hand running work back, say BYE, then close."""
        self._closing = True
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        self.remote.abandon_all("node stopping")
        await self.executor.close()
        self.orchestrator.fail_all(f"node {self.settings.name} stopped before the run finished")
        self.origin.fail_all("internal", f"node {self.settings.name} stopped before the task finished")
        self.forwarder.close_all()
        if self.swim is not None:
            self.swim.leave()
        bye = self.message("BYE", node_id=self.node_id, name=self.settings.name)
        for link in self.links.values():
            link.channel.send([protocol.encode(bye)])
        if self.mailer is not None:
            self.mailer.flush()
        for link in list(self.links.values()):
            self.close_link(link, "this node is stopping", SHUTDOWN_LINGER_MS)
        if self._router_monitor is not None:
            self._router_monitor.close()
        if self.router is not None:
            self.router.close(SHUTDOWN_LINGER_MS)
        if self._authenticator is not None:
            self._authenticator.stop()
        self.ctx.term()
        if self.journal is not None:
            self.journal.close()

    def fatal(self, error: FatalNodeError) -> None:
        log.error("%s", error)
        self._fatal = error
        self.stop()

    def _give_up(self, why: str) -> None:
        """A background loop cannot go on: stop with a clear error rather than run half-alive."""
        self.fatal(FatalNodeError(why))

    # -- sending ------------------------------------------------------------------

    def message(self, type_: str, *, re: int | None = None, **fields: Any) -> Message:
        """A message from this node, validated (a malformed one is our bug: fail loudly here)."""
        if type_ in ("TOKEN", "EVENTS"):  # hot paths, built by this node from already-validated parts
            return Message(type_, fields, next(self._ids), self.node_id, re)
        return protocol.make(type_, src=self.node_id, id=next(self._ids), re=re, **fields)

    def reply(self, identity: bytes, type_: str, *, re: int | None = None, final: bool = False,
              **fields: Any) -> None:
        """Send on the ROUTER to whoever `identity` is (a client or a peer's DEALER),
        in order, batched with whatever else goes there this loop turn. `final`
        messages (a task's last word) pass even a full outbox. Failures to deliver
        come back through `_undeliverable`."""
        if self.mailer is None:
            raise RuntimeError("the node is not running")
        payload = protocol.encode(self.message(type_, re=re, **fields))
        self.stats.sent(type_, len(payload))
        self.mailer.post(identity, payload, final)
        if type_ != "EVENTS" and self.events.wanted():
            self._trace(type_, self.settings.name, self._name_of(identity), fields.get("task_id"), len(payload))

    def _undeliverable(self, identity: bytes, sent: Sent) -> None:
        """A receiver is gone or not reading: its tasks stop."""
        log.info("receiver %r %s", identity, sent.value)
        self.events.unsubscribe(identity)
        self.origin.client_failed(identity, sent)
        self.orchestrator.client_failed(identity)
        self.forwarder.client_failed(identity)
        self.remote.origin_failed(identity, sent)

    def reply_error(self, identity: bytes, code: str, text: str, *, re: int | None = None,
                    task_id: str | None = None, retryable: bool = False) -> None:
        self.reply(identity, "ERROR", re=re, final=True, code=code, message=text, retryable=retryable,
                          task_id=task_id)

    def send_to_peer(self, node_id: str, type_: str, **fields: Any) -> Sent:
        """Send through this node's DEALER to a peer (UNREACHABLE if none is open)."""
        link = self.link_for(node_id)
        if link is None:
            return Sent.UNREACHABLE
        return self.send_on_link(link, type_, protocol.encode(self.message(type_, **fields)), fields.get("task_id"))

    def send_on_link(self, link: Link, type_: str, payload: bytes, task_id: str | None = None) -> Sent:
        if type_ not in ("HEARTBEAT", "HELLO"):  # beats alone do not keep an on-demand link open
            link.used_at = self.clock()
        if self.events.wanted():
            peer = self.table.get(link.node_id) if self.table and link.node_id else None
            self._trace(type_, self.settings.name, peer.name if peer else link.endpoint, task_id, len(payload))
        self.stats.sent(type_, len(payload))
        return link.channel.send([payload])

    def link_for(self, node_id: str) -> Link | None:
        """The link to a peer: the one to the endpoint it advertises, unless another node answered there.
        Under SWIM a live peer outside the active view has none yet: it is dialled now (on demand)."""
        peer = self.table.get(node_id) if self.table else None
        link = self.links.get(peer.identity.endpoint) if peer else None
        if link is None and peer is not None and self.swim is not None and peer.state in ("alive", "suspect"):
            link = self.dial(peer.identity.endpoint)
        return link if link is not None and link.node_id in (None, node_id) else None

    # -- membership -----------------------------------------------------------------

    def identity(self) -> Identity:
        if self.table is None:
            raise RuntimeError("the node is not running")
        return self.table.me

    def _own_identity(self) -> Identity:
        engine = self.engine
        return Identity(self.node_id, self.settings.name, self.endpoint, engine.models, engine.slots, engine.ctx,
                        engine.chat, engine.loaded_models(), engine.loading_models())

    def models_changed(self) -> None:
        """The engine loaded, unloaded or found models: the table (and so `peers`, the next beat) says so."""
        if self.table is not None:
            self.table.refresh_me(self._own_identity())

    def load(self) -> Load:
        return self.executor.load()

    def dial(self, endpoint: str, seed: bool = False) -> Link | None:
        """Open a DEALER to `endpoint` (once, within `MAX_LINKS`) and introduce ourselves; returns the link
        (the one already open, if any)."""
        if endpoint == self.endpoint or not is_endpoint(endpoint):
            return None
        if endpoint in self.links:
            return self.links[endpoint]
        if len(self.links) >= MAX_LINKS and not seed:
            if self._quiet.note("links-full", self.clock()):
                log.warning("not dialling %s: this node already has %d peer links (MAX_LINKS)", endpoint, MAX_LINKS)
            return None
        sock = connect_dealer(self.ctx, endpoint, self.node_id, self.settings.mesh_key)
        link = Link(endpoint, Channel(sock, lambda frames: self._on_dealer_frames(link, frames), DRAIN_BATCH),
                    dialled_at=self.clock(), seed=seed)
        link.monitor = Monitor(sock, zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED,
                               lambda event: self._on_link_event(link, event))
        self.links[endpoint] = link
        log.debug("dialing %s", endpoint)
        self._say_hello(link)
        return link

    def _on_link_event(self, link: Link, event: int) -> None:
        """The TCP connection to a peer closed (its process died or it closed the socket): its tasks move at
        once instead of after `dead_after` silent intervals. Membership still waits for heartbeats (a
        connection can drop and come back), so this moves work, it does not declare the peer dead."""
        if event & HANDSHAKE_FAILED:
            if not link.refused:  # libzmq retries every few hundred ms: say it once per link
                link.refused = True
                log.error("cannot join %s: %s", link.endpoint, handshake_failure(event, self.settings.mesh_key))
            return
        if self._closing or event != zmq.EVENT_DISCONNECTED:
            return
        peer = self.table.get(link.node_id) if self.table is not None and link.node_id else None
        if peer is not None and peer.state in ("alive", "suspect"):
            log.info("connection to %s (%s) closed", peer.name, link.endpoint)
            self.origin.executor_lost(peer.node_id, peer.name, "unreachable (connection closed)")
            if self.swim is not None:
                self.swim.connection_closed(peer.node_id)

    def _on_refused_handshake(self, event: int) -> None:
        """Someone dialled this node with another mesh key or none (libzmq retries every few hundred ms, so
        this is said at once, then at most every REFUSED_LOG_INTERVAL_S with the count). libzmq gives no
        peer address for a failed handshake."""
        self.refused_handshakes += 1
        count = self._quiet.note("handshake", self.clock())
        if count:
            who = ("a process without this mesh's key, or with another" if self.settings.mesh_key is not None else
                   "a process with a mesh key, which this node has not (or not a zmqllm process)")
            log.warning("refused %d connection(s) at the security handshake: %s", count, who)

    def say_quietly(self, identity: bytes | str, what: str) -> None:
        """Log a sender's bad frame or forbidden message: once, then once per interval with a count."""
        count = self._quiet.note(identity, self.clock())
        if count:
            log.warning("%s from %r%s", what, identity, f" ({count} since the last line)" if count > 1 else "")

    def _say_hello(self, link: Link) -> None:
        hello = self.message("HELLO", **self.identity().as_fields())
        self.send_on_link(link, "HELLO", protocol.encode(hello))

    def _observe(self, fields: Any, load: Load | None, reply_to: bytes | None) -> bool:
        """Record a peer's identity; a name clash is refused (and fatal to the newcomer)."""
        if self.table is None:
            return False
        identity = Identity.from_fields(fields)
        if not is_endpoint(identity.endpoint):
            return False
        if self.swim is not None:  # SWIM lists members and judges them; a link only freshens what it says
            self.swim.heard(identity, load)
            return True
        try:
            self.observe_identity(identity, load)
        except NameTaken as exc:
            if reply_to is not None:
                self.reply_error(reply_to, "name_taken", f"refused by {self.settings.name}: {exc}")
            return False
        self.dial(identity.endpoint)
        link = self.links.get(identity.endpoint)
        if link is not None and link.node_id not in (None, identity.node_id) and reply_to is not None:
            # a new process at a known address must learn of us too; its WELCOME names it (a link not yet
            # answered is greeted by `dial` and every heartbeat round already)
            self._say_hello(link)
        return True

    def observe_identity(self, identity: Identity, load: Load | None) -> None:
        """List a node as alive (new, back, or a new process under a known name), or update it; raises
        `NameTaken` when another live node holds its name."""
        if self.table is None:
            return
        before = self.table.by_name(identity.name)
        change = self.table.observe(identity, self.clock(), load)
        if change != "updated":
            self.publish({"k": "peer", "name": identity.name, "state": "alive",
                          "old": None if change == "joined" else "dead"})
            log.info("peer %s %s (%s, models=%s)", identity.name, change, identity.endpoint, ",".join(identity.models))
        if change == "replaced" and before is not None and before.state in ("alive", "suspect"):
            self._peer_gone(before.node_id, before.name, "replaced by a new process")  # the old one is gone

    def on_transition(self, change: Transition) -> None:
        log.info("peer %s %s -> %s", change.peer.name, change.old, change.new)
        self.publish({"k": "peer", "name": change.peer.name, "state": change.new, "old": change.old})
        if change.new in ("dead", "left"):
            self._peer_gone(change.peer.node_id, change.peer.name, change.new)

    def _peer_gone(self, node_id: str, name: str, how: str) -> None:
        """A peer process is gone (dead, left, or replaced by a new one at its address): its work moves."""
        self.origin.executor_lost(node_id, name, how)
        self.remote.origin_lost(node_id)
        self.forwarder.peer_lost(node_id)
        self.orchestrator.replication.peer_lost(node_id)

    def _liveness_round(self) -> float:
        """Judge silence, then forget long-departed peers and close links nobody answers on."""
        period = self.settings.liveness.interval / LIVENESS_CHECKS_PER_INTERVAL
        if self.table is None:
            return period
        now = self.clock()
        for change in self.table.tick(now):
            self.on_transition(change)
        for peer in self.table.forget_departed(now):
            link = self.links.get(peer.identity.endpoint)
            if link is not None and link.node_id == peer.node_id:
                self.close_link(link, f"{peer.name} {peer.state} for {self.settings.liveness.forget_s:g} s")
        unanswered_s = UNANSWERED_LINK_INTERVALS * self.settings.liveness.interval
        for link in list(self.links.values()):
            if not link.seed and link.node_id is None and now - link.dialled_at > unanswered_s:
                self.close_link(link, f"no answer in {unanswered_s:g} s")
        return period

    def close_link(self, link: Link, why: str, linger_ms: int = 0) -> None:
        log.debug("closing the link to %s: %s", link.endpoint, why)
        self.links.pop(link.endpoint, None)
        if link.monitor is not None:
            link.monitor.close()
        link.channel.close(linger_ms)

    def _heartbeat_round(self) -> float:
        """Beat to every peer link (HELLO where the peer is not known alive yet); returns the wait to the next."""
        interval = self.settings.liveness.interval
        if self.table is not None:
            self.models_changed()
            beat = self.message(
                "HEARTBEAT", **self.identity().as_fields(), load=self.load().as_fields(), digest=self.table.digest()
            )
            frame = protocol.encode(beat)
            for link in list(self.links.values()):
                peer = self.table.get(link.node_id) if link.node_id else None
                if peer is not None and peer.state in ("alive", "suspect"):
                    self.send_on_link(link, "HEARTBEAT", frame)
                else:
                    self._say_hello(link)
            self.orchestrator.replication.round()
        self._next_beat = max(self._next_beat + interval, self.clock() - interval)  # no burst after a stall
        return max(0.0, self._next_beat - self.clock())

    # -- receiving ------------------------------------------------------------------------

    def _on_router_frames(self, frames: list[bytes]) -> None:
        if self._closing:
            return
        identity = frames[0]
        try:
            messages = protocol.decode_frame(frames[-1])
        except ProtocolError as exc:
            self.dropped_frames += 1
            self.say_quietly(identity, f"bad frame ({exc.message})")
            self.reply_error(identity, exc.code, exc.message, re=exc.ref)
            return
        self.stats.received([message.type for message in messages], len(frames[-1]))
        if self.events.active and self.table is not None and self.table.get(identity.decode("latin-1")) is None:
            for message in messages:
                self._trace(message.type, self._name_of(identity), self.settings.name, message.get("task_id"),
                            len(frames[-1]))
        for message in messages:
            try:
                self._dispatch_router(identity, message)
            except Exception:  # one bad message must never take the daemon down
                log.exception("internal error handling %s from %r", message.type, identity)
                self.reply_error(identity, "internal", f"internal error handling {message.type}", re=message.id)

    def _on_dealer_frames(self, link: Link, frames: list[bytes]) -> None:
        if self._closing:
            return
        try:
            messages = protocol.decode_frame(frames[-1])
        except ProtocolError as exc:
            self.dropped_frames += 1
            self.say_quietly(link.endpoint, f"bad frame ({exc.message})")
            return
        self.stats.received([message.type for message in messages], len(frames[-1]))
        for message in messages:
            try:
                self._dispatch_dealer(link, message)
            except Exception:
                log.exception("internal error handling %s from %s", message.type, link.endpoint)

    def _dispatch_router(self, identity: bytes, message: Message) -> None:
        """Hand a message to its handler if its sender may send it (`dispatch.ROUTER_SENDERS`)."""
        if self.table is None:
            return
        rule = self._router_rules.get(message.type)
        if rule is None:
            self.reply_error(identity, "bad_request", f"{message.type} is not accepted on a node's socket",
                             re=message.id)
            return
        sender, handle = rule
        is_peer = self.table.get(message.src) is not None and identity == message.src.encode()
        refusal = dispatch.refusal(sender, message, identity, is_peer)
        if refusal is not None:
            self.refused_messages += 1
            self.say_quietly(identity, f"refused {message.type}: {refusal}")
            self.reply_error(identity, "not_allowed", refusal, re=message.id, task_id=message.get("task_id"))
            return
        if is_peer:
            self.table.heard_from(message.src, self.clock())
        handle(identity, message, is_peer)

    def _dispatch_dealer(self, link: Link, message: Message) -> None:
        """A peer's answer on our link to it: only the node that said WELCOME on this link speaks on it."""
        if self.table is None:
            return
        kind = message.type
        if kind == "WELCOME":
            if message["node_id"] != message.src:
                self.say_quietly(link.endpoint, "refused WELCOME: it names another node than its sender")
                return
            if self._observe(message.fields, None, None):
                link.node_id = message.src
                if self.swim is None:
                    self._follow_gossip(message["peers"])
            return
        if kind == "ERROR" and message["code"] == "name_taken":
            self._on_name_taken(link, message["message"])
            return
        if link.node_id is None or message.src != link.node_id:
            self.dropped_frames += 1
            self.say_quietly(link.endpoint, f"dropped {kind}: not from the node that answered on this link")
            return
        self.table.heard_from(message.src, self.clock())
        link.used_at = self.clock()
        if kind in ("ACCEPT", "REJECT", "TOKEN", "DONE", "ERROR"):
            self.origin.on_executor_message(message)
        elif kind in SWIM_TYPES and self.swim is not None:
            self.swim.on_message(message.src, message)
        elif kind == "FOUND":
            self.forwarder.on_found(message)
        elif kind == "REPLICATED":
            self.orchestrator.replication.on_ack(message)
        else:
            log.debug("ignoring %s from %s", kind, link.endpoint)

    def _on_name_taken(self, link: Link, text: str) -> None:
        """A seed refusing this node's name is fatal (the operator must pick another); any other endpoint
        could be anyone, so its refusal only closes that link."""
        if link.seed:
            self.fatal(FatalNodeError(f"cannot join the mesh: {text}"))
            return
        log.error("%s refused this node's name (%s): not dialling it again", link.endpoint, text)
        self.close_link(link, "it refused this node's name")

    # -- handlers of the router's messages (dispatch.router_rules maps types to them) ----------------------

    def on_hello(self, identity: bytes, message: Message, is_peer: bool) -> None:
        if self._observe(message.fields, None, identity) and self.table is not None:
            self.reply(identity, "WELCOME", re=message.id, **self.identity().as_fields(),
                       peers=self.table.gossip_rows() if self.swim is None else [])

    def on_heartbeat(self, identity: bytes, message: Message, is_peer: bool) -> None:
        if self._observe(message.fields, Load.from_fields(message["load"]), identity) and self.table is not None:
            self.origin.load_reported(message["name"])
            if self.swim is None and message["digest"] != self.table.digest():
                self.send_to_peer(message["node_id"], "PEERS", peers=self.table.gossip_rows())

    def on_swim(self, identity: bytes, message: Message, is_peer: bool) -> None:
        """A SWIM message on this node's ROUTER (from the sender's own connection: `dispatch`)."""
        if self.swim is None:
            self.refused_messages += 1
            self.say_quietly(identity, f"refused {message.type}: this node runs membership = heartbeat, its "
                                       "sender swim (every node of a mesh needs the same membership setting)")
            return
        self.swim.on_message(message.src, message, inbound=True)

    def on_peers(self, identity: bytes, message: Message, is_peer: bool) -> None:
        self._follow_gossip(message["peers"])

    def _follow_gossip(self, rows: list[dict[str, Any]]) -> None:
        """Dial the endpoints a WELCOME or PEERS names that this node does not know: `MAX_DIALS_PER_GOSSIP`
        at most per message."""
        if self.table is not None:
            for endpoint in new_endpoints(rows, self.table.known_endpoints())[:MAX_DIALS_PER_GOSSIP]:
                self.dial(endpoint)

    def on_bye(self, identity: bytes, message: Message, is_peer: bool) -> None:
        change = self.table.mark_left(message.src, self.clock()) if self.table is not None else None
        if change is not None:
            self.on_transition(change)

    def on_get_peers(self, identity: bytes, message: Message, is_peer: bool) -> None:
        if self.table is not None:
            self.reply(identity, "PEERS", re=message.id, peers=self.table.rows(self.clock(), self.load()))

    def on_get_status(self, identity: bytes, message: Message, is_peer: bool) -> None:
        self.reply(identity, "STATUS", re=message.id, status=self.status())

    def on_get_tasks(self, identity: bytes, message: Message, is_peer: bool) -> None:
        self.reply(identity, "TASKS", re=message.id, tasks=self.origin.listing())

    def on_get_result(self, identity: bytes, message: Message, is_peer: bool) -> None:
        """A task this node holds (going or ended) is answered here; any other is asked of the mesh, this
        node's own copy (cut short by a crash) answering only if no peer has better."""
        task_id = message["task_id"]

        def answer_here() -> None:
            found = self.origin.result(task_id)
            if found is None:
                self.reply_error(identity, "task_unknown", f"no node of the mesh knows task {task_id!r} (asked "
                                 f"{self.settings.name} and its live peers)", re=message.id, task_id=task_id)
            else:
                self.reply(identity, "RESULT", re=message.id, task=found)

        if self.origin.holding(task_id) in ("going", "finished"):
            answer_here()
        else:
            self.forwarder.forward(identity, message, "task", task_id, answer_here)

    def on_submit(self, identity: bytes, message: Message, is_peer: bool) -> None:
        self.origin.on_submit(identity, message)

    def on_cancel(self, identity: bytes, message: Message, is_peer: bool) -> None:
        """From a peer, a CANCEL is its own assignment's (an origin stopping what it assigned here); from
        anyone else, a task this node is origin of."""
        task_id = message["task_id"]

        def unknown() -> None:
            self.reply_error(identity, "task_unknown", f"no task {task_id!r} on this node"
                             + ("" if is_peer else " or its live peers"), re=message.id, task_id=task_id)

        if is_peer:
            if not self.remote.on_cancel(message):
                unknown()
        elif not self.origin.on_cancel(identity, message):
            self.forwarder.forward(identity, message, "task", task_id, unknown)

    def on_lookup(self, identity: bytes, message: Message, is_peer: bool) -> None:
        """A peer looks for the node holding a task or run (node/forward.py): say what this node holds."""
        kind, key = message["kind"], message["key"]
        holding = (self.origin.holding(key) if kind == "task" else
                   self.orchestrator.holding(key) if kind == "run" else None)
        epoch = self.orchestrator.epoch_of(key) if kind == "run" and holding is not None else None
        self.reply(identity, "FOUND", re=message.id, kind=kind, key=key, has=holding is not None, state=holding,
                   epoch=epoch)

    def on_assign(self, identity: bytes, message: Message, is_peer: bool) -> None:
        self.remote.on_assign(identity, message)

    def on_run(self, identity: bytes, message: Message, is_peer: bool) -> None:
        """Attaching to a run another node orchestrates is forwarded there; everything else is this node's."""
        run_id = message["run_id"]
        following = message.get("attach") or message.get("resume")  # a resume may find the run adopted elsewhere
        if following and self.orchestrator.holding(run_id) not in ("going", "finished"):
            self.forwarder.forward(identity, message, "run", run_id,
                                   lambda: self.orchestrator.on_run(identity, message))
        else:
            self.orchestrator.on_run(identity, message)

    def on_cancel_run(self, identity: bytes, message: Message, is_peer: bool) -> None:
        run_id = message["run_id"]
        if self.orchestrator.holding(run_id) in ("going", "finished"):
            self.orchestrator.on_cancel(identity, message)
        else:
            self.forwarder.forward(identity, message, "run", run_id,
                                   lambda: self.orchestrator.on_cancel(identity, message))

    def on_replicate(self, identity: bytes, message: Message, is_peer: bool) -> None:
        self.orchestrator.replication.on_replicate(identity, message)

    def on_get_runs(self, identity: bytes, message: Message, is_peer: bool) -> None:
        self.reply(identity, "RUNS", re=message.id, runs=self.orchestrator.listing())

    def on_subscribe(self, identity: bytes, message: Message, is_peer: bool) -> None:
        if message.type == "SUBSCRIBE":
            if not self.events.subscribe(identity, self.clock()):
                self.reply_error(identity, "busy", f"{self.settings.name} already feeds "
                                 f"{self.events.max_subscribers} dashboards", re=message.id, retryable=True)
                return
        else:
            self.events.unsubscribe(identity)
        self.reply(identity, "EVENTS", re=message.id, node=self.settings.name, events=[], dropped=0)

    # -- trace events for dashboards ----------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        """Offer an event to subscribed dashboards (nothing is built when none listens)."""
        if self.events.active:
            event["ts"] = round(time.time(), 4)
            self.events.publish(event)

    def _trace(self, type_: str, src: str, dst: str, task_id: str | None, size: int) -> None:
        event: dict[str, Any] = {"k": "msg", "type": type_, "src": src, "dst": dst, "size": size}
        if task_id is not None:
            event["task_id"] = task_id
        self.publish(event)

    def _name_of(self, identity: bytes) -> str:
        """A ROUTER identity as a dashboard shows it: a peer's name, or client:<id>."""
        peer = self.table.get(identity.decode("latin-1")) if self.table else None
        if peer is not None:
            return peer.name
        if identity.startswith(b"client-") and identity.isascii():
            return "client:" + identity.decode()[7:]  # zmqllm clients route under their client id
        return "client:" + identity.hex()[:8]

    def _checkpoint_round(self) -> float:
        self.origin.checkpoint()
        return CHECKPOINT_INTERVAL_S

    def _events_round(self) -> float:
        for identity, events, dropped in self.events.drain(self.clock()):
            self.reply(identity, "EVENTS", node=self.settings.name, events=events, dropped=dropped)
        return FLUSH_INTERVAL_S

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `zmqllm status` shows about this node."""
        peers = self.table.peers() if self.table is not None else []
        return {
            "name": self.settings.name,
            "node_id": self.node_id,
            "endpoint": self.endpoint,
            "version": __version__,
            "protocol_version": protocol.PROTOCOL_VERSION,
            "uptime_s": round(self.clock() - self.started_at, 3),
            "models": list(self.engine.models),
            "slots": self.engine.slots,
            "tasks": {
                "running": self.executor.active,
                "queued": self.executor.queued,
                "done": self.executor.completed,
                "routing": self.origin.in_flight(),
            },
            "peers": {state: sum(1 for p in peers if p.state == state) for state in ("alive", "suspect", "dead", "left")},
            "dropped_frames": self.dropped_frames,
            "refused_messages": self.refused_messages,
            "links": len(self.links),
            "membership": self.settings.membership,
        }

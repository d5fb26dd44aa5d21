"""Who is in the mesh and whether they are alive. Pure: fed messages and a clock.

A peer is heard from through HELLO, WELCOME and HEARTBEAT (each carries its full
identity, so any of them can introduce a node). Silence moves it alive → suspect
→ dead after `suspect_after` and `dead_after` heartbeat intervals; a BYE marks it
`left` at once. Hearing from a dead or departed node (the same process, or a new
one under the same name) makes it alive again: rejoining needs no operator.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from zmqllm.core.prefix import parse_advertised

PeerState = Literal["alive", "suspect", "dead", "left"]
Change = Literal["joined", "rejoined", "replaced", "updated"]


class NameTaken(Exception):
    """Another live node already uses this name (names are unique in a mesh)."""


@dataclass(frozen=True)
class Liveness:
    """Heartbeat timing: `interval` in seconds, the thresholds in intervals."""

    interval: float = 0.5
    suspect_after: float = 2.0
    dead_after: float = 4.0
    forget_after: float = 120.0
    """Intervals a dead or departed peer stays listed before its row (and this node's link to it) is dropped."""

    @property
    def suspect_s(self) -> float:
        return self.interval * self.suspect_after

    @property
    def dead_s(self) -> float:
        return self.interval * self.dead_after

    @property
    def forget_s(self) -> float:
        return self.interval * self.forget_after


@dataclass(frozen=True)
class Identity:
    """What a node says about itself in HELLO, WELCOME and HEARTBEAT."""

    node_id: str
    name: str
    endpoint: str
    models: tuple[str, ...]
    slots: int
    ctx: int = 0  # context tokens per request; 0 = no limit
    chat: bool = False  # serves chat requests
    loaded: tuple[str, ...] | None = None
    """Of `models`, those loaded now (a cold load costs seconds); None: all (a node that does not say)."""
    loading: tuple[str, ...] = ()

    @classmethod
    def from_fields(cls, fields: Any) -> Identity:
        loaded = fields.get("loaded")
        return cls(fields["node_id"], fields["name"], fields["endpoint"], tuple(fields["models"]), fields["slots"],
                   fields.get("ctx", 0), fields.get("chat", False), None if loaded is None else tuple(loaded),
                   tuple(fields.get("loading") or ()))

    @property
    def loaded_models(self) -> tuple[str, ...]:
        return self.models if self.loaded is None else self.loaded

    def as_fields(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "name": self.name,
            "endpoint": self.endpoint,
            "models": list(self.models),
            "slots": self.slots,
            "ctx": self.ctx,
            "chat": self.chat,
            **({} if self.loaded is None else {"loaded": list(self.loaded)}),
            **({"loading": list(self.loading)} if self.loading else {}),
        }


@dataclass(frozen=True)
class Load:
    """A node's work as its heartbeat reports it."""

    active: int = 0
    queued: int = 0
    slots: int = 0
    tok_s: float = 0.0
    cache: Mapping[str, frozenset[int]] = field(default_factory=dict, compare=False, hash=False)
    """Per model, the block hashes of the prompts its caches hold (`zmqllm.core.prefix`)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens this node ran since it started, and of them those a cache held (its cache hit rate)."""
    speed: float = 0.0
    """Decode tokens/s of one request on this node, a moving average; 0 until known."""

    @property
    def cache_hit(self) -> float | None:
        return round(self.cached_tokens / self.prompt_tokens, 3) if self.prompt_tokens else None

    @classmethod
    def from_fields(cls, load: dict[str, Any]) -> Load:
        def number(key: str, kind: type) -> Any:
            return plain_number(load.get(key, 0), kind)

        return cls(number("active", int), number("queued", int), number("slots", int), number("tok_s", float),
                   parse_advertised(load.get("cache")), number("prompt_tokens", int), number("cached_tokens", int),
                   max(0.0, number("speed", float)))

    def as_fields(self) -> dict[str, Any]:
        fields = {"active": self.active, "queued": self.queued, "slots": self.slots, "tok_s": round(self.tok_s, 2)}
        if self.cache:
            fields["cache"] = {model: list(hashes) for model, hashes in self.cache.items()}
        if self.prompt_tokens:
            fields.update(prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens)
        if self.speed:
            fields["speed"] = round(self.speed, 2)
        return fields


@dataclass
class Peer:
    """One row of the peer table."""

    identity: Identity
    last_seen: float
    state: PeerState = "alive"
    load: Load = field(default_factory=Load)
    since: float = 0.0
    """When it entered its current state (a departed row is forgotten `forget_s` after)."""

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def node_id(self) -> str:
        return self.identity.node_id


@dataclass(frozen=True)
class Transition:
    """A liveness change the daemon acts on (fail tasks over, log, publish)."""

    peer: Peer
    old: PeerState | None
    new: PeerState


class PeerTable:
    """The peer table of one node (which is itself a row, always alive)."""

    def __init__(self, me: Identity, liveness: Liveness, now: float, judge_by_silence: bool = True) -> None:
        self.me = me
        self.liveness = liveness
        self.judge_by_silence = judge_by_silence
        """False when another judge (SWIM) decides liveness: hearing from a suspect then does not revive it."""
        self._peers: dict[str, Peer] = {}
        self._self_peer = Peer(me, now)

    def refresh_me(self, me: Identity) -> None:
        """This node's models or loaded models changed (a load, an unload, a rescan): the next beat says so."""
        if me.node_id != self.me.node_id:
            raise ValueError("a node's id never changes")
        self.me = me
        self._self_peer.identity = me

    # -- hearing from peers -------------------------------------------------

    def observe(self, identity: Identity, now: float, load: Load | None = None) -> Change:
        """Record a HELLO/WELCOME/HEARTBEAT. Raises `NameTaken` when a different
        live node (another endpoint) already holds `identity.name`. Hearing this
        node's own identity (a seed that is another spelling of its own address)
        changes nothing."""
        if identity.node_id == self.me.node_id:
            return "updated"
        if identity.name == self.me.name and identity.node_id != self.me.node_id:
            raise NameTaken(f"name {identity.name!r} is this node's own name ({self.me.endpoint})")
        peer = self._peers.get(identity.node_id)
        if peer is not None:
            change: Change = "rejoined" if peer.state in ("dead", "left") else "updated"
            if change == "rejoined":
                peer.since = now
            peer.identity, peer.last_seen, peer.state = identity, now, "alive"
            if load is not None:
                peer.load = load
            return change
        holder = self.by_name(identity.name)
        change = "joined"
        if holder is not None:
            if holder.state in ("alive", "suspect") and holder.identity.endpoint != identity.endpoint:
                raise NameTaken(
                    f"name {identity.name!r} is already used by live node at {holder.identity.endpoint}"
                )
            del self._peers[holder.node_id]
            change = "replaced"
        self._peers[identity.node_id] = Peer(identity, now, "alive", load or Load(), since=now)
        return change

    def heard_from(self, node_id: str, now: float) -> bool:
        """Any message from a known node proves it alive; returns whether it was known."""
        peer = self._peers.get(node_id)
        if peer is None:
            return False
        peer.last_seen = now
        if peer.state == "suspect" and self.judge_by_silence:
            peer.state = "alive"
        return True

    def judge(self, node_id: str, state: PeerState, now: float) -> Transition | None:
        """Another judge of liveness (SWIM, `membership = "swim"`) moved a peer: the table follows it."""
        peer = self._peers.get(node_id)
        if peer is None or peer.state == state:
            return None
        old, peer.state, peer.since = peer.state, state, now
        return Transition(peer, old, state)

    def refresh(self, identity: Identity, load: Load | None, now: float, first_hand: bool) -> bool:
        """Newer identity (and load) of a listed peer, its state untouched: a heartbeat on a link when SWIM
        judges liveness (`first_hand`), or gossiped metadata. Returns whether the peer was listed."""
        peer = self._peers.get(identity.node_id)
        if peer is None:
            return False
        peer.identity = identity
        if load is not None:
            peer.load = load
        if first_hand:
            peer.last_seen = now
        return True

    def mark_left(self, node_id: str, now: float) -> Transition | None:
        """A BYE: the node left on purpose, so its tasks move at once."""
        peer = self._peers.get(node_id)
        if peer is None or peer.state == "left":
            return None
        old, peer.state, peer.since = peer.state, "left", now
        return Transition(peer, old, "left")

    def forget_departed(self, now: float) -> list[Peer]:
        """Drop the rows of peers dead or departed for `forget_s`: a mesh with churn keeps a bounded table
        (a node that comes back later is welcomed as new)."""
        gone = [p for p in self._peers.values()
                if p.state in ("dead", "left") and now - p.since >= self.liveness.forget_s]
        for peer in gone:
            del self._peers[peer.node_id]
        return gone

    def tick(self, now: float) -> list[Transition]:
        """Advance liveness by the clock; returns the state changes (none when another judge decides)."""
        changes: list[Transition] = []
        if not self.judge_by_silence:
            return changes
        for peer in self._peers.values():
            if peer.state in ("dead", "left"):
                continue
            age = now - peer.last_seen
            new: PeerState = peer.state
            if age > self.liveness.dead_s:
                new = "dead"
            elif age > self.liveness.suspect_s:
                new = "suspect"
            if new != peer.state:
                changes.append(Transition(peer, peer.state, new))
                peer.state, peer.since = new, now
        return changes

    # -- reading the table ----------------------------------------------------

    def get(self, node_id: str) -> Peer | None:
        return self._peers.get(node_id)

    def by_name(self, name: str) -> Peer | None:
        if name == self.me.name:
            return self._self_peer
        return next((p for p in self._peers.values() if p.name == name), None)

    def peers(self) -> list[Peer]:
        """Every other node ever heard from, sorted by name."""
        return sorted(self._peers.values(), key=lambda p: p.name)

    def live_peers(self) -> list[Peer]:
        """Other nodes that may be given work (alive or merely suspect)."""
        return [p for p in self.peers() if p.state in ("alive", "suspect")]

    def known_endpoints(self) -> set[str]:
        return {p.identity.endpoint for p in self._peers.values()} | {self.me.endpoint}

    def digest(self) -> str:
        """A short fingerprint of the live membership: equal digests mean two nodes
        agree on who is alive, so they need not gossip."""
        ids = sorted([self.me.node_id] + [p.node_id for p in self.live_peers()])
        return hashlib.blake2s("\n".join(ids).encode(), digest_size=8).hexdigest()

    def gossip_rows(self) -> list[dict[str, Any]]:
        """What PEERS tells other nodes: every live node they could dial."""
        rows = [self.me] + [p.identity for p in self.live_peers()]
        return [{"name": i.name, "node_id": i.node_id, "endpoint": i.endpoint} for i in rows]

    def rows(self, now: float, my_load: Load) -> list[dict[str, Any]]:
        """The peer listing users see (CONTRACT.md peer rows), this node first."""
        self._self_peer.load, self._self_peer.last_seen = my_load, now
        everyone = [self._self_peer] + self.peers()
        return [_row(p, now, p is self._self_peer) for p in everyone]


def plain_number(value: Any, kind: type) -> Any:
    """`value` as `kind` when it is a finite int or float (a bool is not a number), else 0: a peer's report of
    its load is a hint, and a malformed figure reads as nothing rather than refusing the report."""
    usable = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return kind(value) if usable else kind(0)


def new_endpoints(rows: Iterable[dict[str, Any]], known: set[str]) -> list[str]:
    """Endpoints named in gossip that this node does not know yet."""
    found = []
    for row in rows:
        endpoint = row.get("endpoint")
        if isinstance(endpoint, str) and endpoint not in known and endpoint not in found:
            found.append(endpoint)
    return found


def _row(peer: Peer, now: float, is_self: bool) -> dict[str, Any]:
    identity, load = peer.identity, peer.load
    return {
        "name": identity.name,
        "node_id": identity.node_id,
        "endpoint": identity.endpoint,
        "models": list(identity.models),
        "state": peer.state,
        "slots": {"busy": load.active, "total": identity.slots},
        "ctx": identity.ctx,
        "chat": identity.chat,
        "loaded": list(identity.loaded_models),
        "loading": list(identity.loading),
        "cache_hit": load.cache_hit,
        "queued": load.queued,
        "tok_s": round(load.tok_s, 2),
        "heartbeat_age_s": round(max(0.0, now - peer.last_seen), 3),
        "self": is_self,
    }

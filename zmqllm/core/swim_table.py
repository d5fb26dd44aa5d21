"""What one SWIM node believes of the others, and the precedence rules that decide it.

Why a module of its own: `core/swim.py` is the protocol (probes, relays, gossip, push-pull); this is the state
those messages feed, and the rules for what a node makes of what it hears. Keeping the two apart lets each be
read, and changed, without the other: the table never sends anything, it only tells the protocol (callbacks)
what is news, who came up, and what was said of this node.

Precedence of what is said about a node: a higher incarnation wins; at equal incarnation dead and left beat
suspect, which beats alive; a dead or departed row comes back only with a higher incarnation. Only a node raises
its own incarnation (to refute, to leave), and only a node can say it left. A node's metadata (an opaque blob
standing in for its models and load) has its own version and rides on alive updates.

Lifeguard's suspicion (`_Suspicion`): a suspicion's timeout starts at `suspicion_max_mult` times its floor and
shrinks as independent members confirm it: one slow link cannot kill a node, a crash seen by several is
declared fast.

The table's digest is an XOR of one hash per member, this node's own row included (it changes when this node's
incarnation changes or it leaves), so it ignores order and updates in O(1); equal digests mean two tables agree.
The view rings (`core/swim_view.py`) hold the live members; the active view is cached until one comes or goes.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from zmqllm.core.swim_config import SwimConfig
from zmqllm.core.swim_view import ViewRings
from zmqllm.core.swim_wire import UP, Status, Update

__all__ = ["Change", "Member", "MemberTable", "Row"]


@dataclass(frozen=True, slots=True)
class Change:
    """A liveness change the daemon acts on (fail tasks over, log, publish). `first_hand`: this node's own
    probe or timer decided it, rather than hearing it from others."""

    node: str
    old: Status | None
    new: Status
    incarnation: int
    first_hand: bool = False


@dataclass(frozen=True, slots=True)
class Member:
    """One row of the membership table, as `Swim.members()` shows it."""

    node: str
    address: str
    status: Status
    incarnation: int
    meta: bytes
    meta_version: int
    since: float


@dataclass(slots=True)
class Row:
    """What this node believes of one other member; `since` is when its status last changed."""

    node: str
    address: str
    status: Status
    incarnation: int
    since: float
    meta: bytes = b""
    meta_version: int = 0

    def as_member(self) -> Member:
        return Member(self.node, self.address, self.status, self.incarnation, self.meta, self.meta_version,
                      self.since)


@dataclass(slots=True)
class _Suspicion:
    """Lifeguard's shrinking timeout: `ceiling` with one accuser, down to `floor` (logarithmically) as
    `expected` independent confirmations arrive."""

    started: float
    floor: float
    ceiling: float
    expected: int
    confirmers: set[str]
    deadline: float = 0.0

    def __post_init__(self) -> None:
        self._recompute()

    def confirm(self, source: str) -> bool:
        """Count a new accuser; returns whether it shortened the timeout (then the rumor is worth passing on;
        beyond `expected` confirmations nothing changes, and the rumor stays quiet, as in memberlist)."""
        if source in self.confirmers or len(self.confirmers) > self.expected:
            return False
        self.confirmers.add(source)
        self._recompute()
        return True

    def _recompute(self) -> None:
        extra = len(self.confirmers) - 1
        if self.expected < 1 or extra >= self.expected:
            timeout = self.floor
        else:
            shrink = math.log(extra + 1) / math.log(self.expected + 1)
            timeout = max(self.floor, self.ceiling - shrink * (self.ceiling - self.floor))
        self.deadline = self.started + timeout


@functools.lru_cache(maxsize=1 << 16)
def _row_hash(node: str, incarnation: int, up: bool) -> int:
    """A member's share of the table digest (XORed together, so the digest ignores order and updates in O(1))."""
    text = f"{node}/{incarnation}/{'up' if up else 'down'}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


class MemberTable:
    """The rows of every other member this node knows, and what follows from them: digest, down set, recent
    deaths, suspicions, view rings and active view, and the liveness changes the daemon reads.

    The protocol is reached only through the callbacks: `spread(update)` passes news on (as a rumor, or to a
    push-pull that decides how its news travel), `on_up(node)` tells it a member came up (to probe it soon),
    `about_me(update)` hands it what was said of this node (to refute), `refuse(reason)` counts news refused."""

    def __init__(self, node: str, config: SwimConfig, spread: Callable[[Update], None],
                 on_up: Callable[[str], None], about_me: Callable[[Update], None],
                 refuse: Callable[[str], None]) -> None:
        self.node, self.config = node, config
        self._spread_update, self._on_up, self._about_me, self._refuse = spread, on_up, about_me, refuse
        self.rows: dict[str, Row] = {}
        self.down: set[str] = set()
        """Members held dead (not departed): push-pull partners now and then, to find a healed partition."""
        self.recent_deaths: deque[tuple[float, str]] = deque()
        """(since, node) of members that died lately, oldest first: fast reconnect targets (`reconnect_window`)."""
        self.rings = ViewRings(config.view_rings)
        """The live members, this node included."""
        self.rings.add(node)
        self._view: list[str] | None = None
        self.view_set: frozenset[str] = frozenset()
        """The active view as a set, as of the last `current_view()`."""
        self._changes: list[Change] = []
        self._meta_changed: set[str] = set()
        self._suspicions: dict[str, _Suspicion] = {}
        self._deadlines: list[tuple[float, str]] = []
        """A heap of suspicion deadlines; entries whose suspicion ended or moved are skipped when reached."""
        self._own_hash = _row_hash(node, 0, True)
        self.digest = self._own_hash
        """64-bit fingerprint of (node, incarnation, up or down) over the table, this node included."""

    # -- this node's own row, and loading ---------------------------------------------------------------------

    def set_own(self, incarnation: int, up: bool) -> None:
        """This node's own row changed (a new incarnation, or it left): swap its share of the digest."""
        own = _row_hash(self.node, incarnation, up)
        self.digest ^= self._own_hash ^ own
        self._own_hash = own

    def preload(self, members: Iterable[tuple[str, str]], now: float) -> None:
        """List these (node, address) pairs alive at incarnation 0, reporting no changes (`Swim.preload`)."""
        for node, address in members:
            if node != self.node and node not in self.rows:
                self.rows[node] = Row(node, address, "alive", 0, now)
                self.digest ^= _row_hash(node, 0, True)
        self.rings.rebuild([self.node, *(row.node for row in self.rows.values() if row.status in UP)])
        self._view = None

    # -- reading ----------------------------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every other member, by node id."""
        return [row.as_member() for row in sorted(self.rows.values(), key=lambda r: r.node)]

    def take_changes(self) -> list[Change]:
        changes, self._changes = self._changes, []
        return changes

    def take_meta_changes(self) -> set[str]:
        changed, self._meta_changed = self._meta_changed, set()
        return changed

    def next_deadline(self) -> float:
        """The earliest suspicion deadline in the heap (possibly a stale one: reaching it is harmless)."""
        return self._deadlines[0][0] if self._deadlines else math.inf

    def current_view(self) -> list[str]:
        """Every live member up to `view_threshold`, else the ring neighbours; cached until one comes or goes."""
        if self._view is None:
            if len(self.rings) <= self.config.view_threshold:
                self._view = [node for node in self.rings.nodes() if node != self.node]
            else:
                self._view = self.rings.neighbours(self.node)
            self.view_set = frozenset(self._view)
        return self._view

    def update_of(self, row: Row, source: str) -> Update:
        if row.status in UP:
            return Update(row.node, row.status, row.incarnation, source, row.address, row.meta_version, row.meta)
        return Update(row.node, row.status, row.incarnation, source)

    def full_state(self) -> tuple[Update, ...]:
        """Every row as a push-pull lists it (this node's own update aside): first-hand for alive and left."""
        return tuple(self.update_of(row, row.node if row.status in ("alive", "left") else self.node)
                     for row in self.rows.values())

    # -- the clock --------------------------------------------------------------------------------------------

    def expire_suspicions(self, now: float) -> list[tuple[str, Update]]:
        """Declare dead the suspects whose time ran out; returns (address, verdict) for each, to be sent to the
        member itself (if it lives, it refutes at once)."""
        verdicts: list[tuple[str, Update]] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, node = heapq.heappop(deadlines)
            suspicion = self._suspicions.get(node)
            if suspicion is None or suspicion.deadline != deadline:
                continue  # refuted, confirmed otherwise, or shortened (its new deadline is in the heap)
            row = self.rows[node]
            verdict = Update(node, "dead", row.incarnation, self.node)
            self.apply(verdict, now)
            verdicts.append((row.address, verdict))
        return verdicts

    def forget_departed(self, now: float) -> None:
        """Drop dead and departed rows older than `forget_after`."""
        gone = [row for row in self.rows.values()
                if row.status in ("dead", "left") and now - row.since >= self.config.forget_after]
        for row in gone:
            del self.rows[row.node]
            self.digest ^= _row_hash(row.node, row.incarnation, False)
            self.down.discard(row.node)

    # -- applying what is said ----------------------------------------------------------------------------------

    def merge(self, updates: tuple[Update, ...], now: float) -> None:
        """Apply a message's updates, skipping (cheaply) what this node has heard already."""
        rows = self.rows
        for update in updates:
            row = rows.get(update.node)
            if row is not None and update.status == row.status and update.incarnation == row.incarnation \
                    and update.status != "suspect" and update.meta_version <= row.meta_version:
                continue  # heard already, as most gossip is
            self.apply(update, now)

    def apply(self, update: Update, now: float) -> None:
        """Apply one update by the precedence rules (module docstring) and pass on what was news."""
        if update.node == self.node:
            self._about_me(update)
            return
        row = self.rows.get(update.node)
        status = update.status
        if row is None:
            if status == "alive" and update.address:
                self._add_row(update, now)
            return
        if update.meta_version > row.meta_version:
            row.meta, row.meta_version = update.meta, update.meta_version
            self._meta_changed.add(row.node)
            if row.status == "alive" and (status != "alive" or update.incarnation <= row.incarnation):
                self._spread(row, row.node)  # else the liveness change below spreads it
        if status == "alive":
            if update.incarnation > row.incarnation:
                row.address = update.address or row.address
                self._set_status(row, "alive", update.incarnation, now)
                self._spread(row, row.node)
        elif update.incarnation >= row.incarnation and row.status != "left":
            if status == "suspect":
                self._suspect(row, update, now)
            elif row.status != "dead" or status == "left":
                self._set_status(row, "left" if status == "left" and update.source == row.node else "dead",
                                 update.incarnation, now, first_hand=update.source == self.node)
                self._spread(row, update.source)

    def revive(self, row: Row, update: Update, now: float) -> None:
        """Take a partner's word that a member this node holds dead lives, at the same incarnation
        (`AntiEntropy.on_sync`, core/swim_sync.py)."""
        row.address = update.address or row.address
        if update.meta_version > row.meta_version:
            row.meta, row.meta_version = update.meta, update.meta_version
            self._meta_changed.add(row.node)
        self._set_status(row, "alive", row.incarnation, now)
        if update.status == "suspect":
            self.apply(update, now)

    def _suspect(self, row: Row, update: Update, now: float) -> None:
        if row.status == "dead":
            return
        if row.status == "suspect":
            if update.incarnation > row.incarnation:
                self._set_status(row, "suspect", update.incarnation, now)
            suspicion = self._suspicions[row.node]
            if suspicion.confirm(update.source):
                heapq.heappush(self._deadlines, (suspicion.deadline, row.node))
                self._spread(row, update.source)  # confirmations travel too: they shorten others' timers
            return
        self._set_status(row, "suspect", update.incarnation, now, first_hand=update.source == self.node)
        suspicion = self._suspicions[row.node] = self._new_suspicion(now, update.source)
        heapq.heappush(self._deadlines, (suspicion.deadline, row.node))
        self._spread(row, update.source)

    def _add_row(self, update: Update, now: float) -> None:
        if len(self.rows) >= self.config.max_members:
            self._refuse(f"news of {update.node!r}: the table is full ({self.config.max_members} members)")
            return
        row = Row(update.node, update.address, "alive", update.incarnation, now, update.meta, update.meta_version)
        self.rows[row.node] = row
        self.digest ^= _row_hash(row.node, row.incarnation, True)
        self._became_up(row.node)
        self._changes.append(Change(row.node, None, "alive", row.incarnation))
        self._spread(row, row.node)

    def _set_status(self, row: Row, status: Status, incarnation: int, now: float, first_hand: bool = False) -> None:
        old = row.status
        was_up, is_up = old in UP, status in UP
        self.digest ^= _row_hash(row.node, row.incarnation, was_up) ^ _row_hash(row.node, incarnation, is_up)
        row.incarnation = incarnation
        if old == status:
            return
        row.status, row.since = status, now
        if status != "suspect":
            self._suspicions.pop(row.node, None)
        if is_up and not was_up:
            self.down.discard(row.node)
            self._became_up(row.node)
        elif was_up and not is_up:
            self.rings.remove(row.node)
            self._view = None
        if status == "dead":
            self.down.add(row.node)
            self.recent_deaths.append((now, row.node))
        elif status == "left":
            self.down.discard(row.node)
        self._changes.append(Change(row.node, old, status, incarnation, first_hand))

    def _became_up(self, node: str) -> None:
        self.rings.add(node)
        self._view = None
        self._on_up(node)

    def _new_suspicion(self, now: float, source: str) -> _Suspicion:
        config, live = self.config, len(self.rings)
        floor = config.suspicion_floor(live)
        # too few others (this node and the suspect aside) to give the confirmations: the floor at once, as
        # memberlist does; a 3-node mesh then judges a frozen peer in about today's 2 s
        expected = config.suspicion_confirmations if live - 2 >= config.suspicion_confirmations else 0
        return _Suspicion(now, floor, floor * config.suspicion_max_mult, expected, {source})

    def _spread(self, row: Row, source: str) -> None:
        self._spread_update(self.update_of(row, source))

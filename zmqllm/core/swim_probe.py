"""SWIM's failure detector: this node's probes, and the ping-reqs it serves for others.

Why a module of its own: probing is the one part of SWIM with its own state machine (a probe in flight goes
from ping to ping-req plus a second ping to a verdict; a relay from ping to ack or nack), its own timers and its
own round-robin order. `core/swim.py` keeps the rest of the protocol (gossip, push-pull, refutation) and feeds
this the probe messages; `core/swim_table.py` holds what the probes are about.

Each protocol period this node pings one member, round-robin over a shuffled list of the view, reshuffled at
each pass: every member is probed once per pass, so a crash is found within one pass however unlucky the draw.
A member that just came up is slotted into the rest of the pass (with the full view, as memberlist does), and a
hint from the transport (`probe_soon`) puts a member next. No ack by `probe_timeout` asks `indirect_checks`
members to probe it (ping-req) and pings it once more directly; no ack by the end of the period suspects it.

Lifeguard: the probe period and timeout stretch by the node's local health + 1; a ping to a suspect carries
the suspicion first (buddy system); helpers that did not even nack count against this node's health, as does a
probe with no helpers that failed, or a tick a whole period late (the silence was this node's: no suspicion).

Sequence numbers are this module's alone: a probe's ping and ping-reqs share one, each relay's ping has its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from zmqllm.core.swim_config import SwimConfig
from zmqllm.core.swim_table import MemberTable
from zmqllm.core.swim_wire import MAX_NUMBER, UP, Ack, Message, Nack, Outgoing, Ping, PingReq, Update

__all__ = ["MAX_RELAYS", "Prober"]

MAX_RELAYS = 256
"""Ping-reqs served at once; more is a flood."""


@dataclass(slots=True)
class _Probe:
    """This node's probe in flight: acks count from the target or from a helper asked to relay; nacks only
    from helpers, once each."""

    target: str
    seq: int
    indirect_at: float
    ends_at: float
    indirect_sent: bool = False
    helpers: frozenset[str] = frozenset()
    nacked: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Relay:
    """A ping-req this node serves: `target`'s ack (to our own seq) goes back to `requester` as `their_seq`."""

    requester: str
    target: str
    their_seq: int
    nack_at: float


class Prober:
    """This node's probe in flight, its probe order and the relays it serves, over the member table.

    `Swim` owns it and reaches it for ticks and probe messages; it reaches `Swim` only through the callbacks:
    `health()` reads the local health (which stretches the timers), `adjust_health(delta)` moves it,
    `piggyback(reserved)` takes rumors to carry (leaving `reserved` slots), `to(node, message)` addresses a
    message. A probe's verdict, a suspicion, goes straight to the table. Which node has left is `Swim`'s to
    check: after `stop()` nothing is due here but the relays already served."""

    def __init__(self, node: str, table: MemberTable, config: SwimConfig, rng: random.Random, now: float, *,
                 health: Callable[[], int], adjust_health: Callable[[int], None],
                 piggyback: Callable[[int], tuple[Update, ...]], to: Callable[[str, Message], Outgoing]) -> None:
        self.node, self.config = node, config
        self._table, self._rng = table, rng
        self._health, self._adjust_health, self._piggyback, self._to = health, adjust_health, piggyback, to
        self._probe: _Probe | None = None
        self._order: list[str] = []
        self._order_at = 0
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._next_probe_at = now + rng.uniform(0, config.probe_interval)

    def next_wakeup(self) -> float:
        """When a probe is next due, the one in flight moves on, or a relay's nack is due."""
        times = [self._next_probe_at]
        probe = self._probe
        if probe is not None:
            times.append(probe.ends_at if probe.indirect_sent else probe.indirect_at)
        if self._relays:
            times.append(next(iter(self._relays.values())).nack_at)
        return min(times)

    def stop(self) -> None:
        """The node left: drop the probe in flight and the relays it serves (a node that left nacks nobody), and
        start no other; else a relay's past nack time would keep `next_wakeup` due for ever."""
        self._probe = None
        self._relays.clear()
        self._next_probe_at = math.inf

    # -- the clock --------------------------------------------------------------------------------------------

    def settle(self, now: float, out: list[Outgoing]) -> None:
        """Move the probe in flight on (ping-req, verdict) and nack the relays whose time ran out."""
        self._advance_probe(now, out)
        self._send_due_nacks(now, out)

    def start_due(self, now: float, out: list[Outgoing]) -> None:
        """Ping the next member if a protocol period has passed."""
        if now < self._next_probe_at:
            return
        stretch = self._health() + 1
        self._next_probe_at = now + self.config.probe_interval * stretch
        target = self._next_target()
        if target is None:
            return
        self._probe = _Probe(target, self._new_seq(), now + self.config.probe_timeout * stretch,
                             now + self.config.probe_interval * stretch)
        out.append(self._to(target, Ping(self._probe.seq, target, self._buddy(target))))

    def _advance_probe(self, now: float, out: list[Outgoing]) -> None:
        probe = self._probe
        if probe is None:
            return
        if now >= probe.ends_at + self.config.probe_interval:
            # this tick is a period late: the loop was paused or starved, so the silence is ours (Lifeguard)
            self._probe = None
            self._adjust_health(1)
            return
        if not probe.indirect_sent and now >= probe.indirect_at:
            self._ask_helpers(probe, out)
        if now < probe.ends_at:
            return
        self._probe = None
        # Lifeguard: helpers that did not even nack point at us; with no helpers, any failure counts
        helpers = len(probe.helpers)
        self._adjust_health(helpers - len(probe.nacked) if helpers else 1)
        row = self._table.rows.get(probe.target)
        if row is not None and row.status in UP:
            self._table.apply(Update(row.node, "suspect", row.incarnation, self.node), now)

    def _ask_helpers(self, probe: _Probe, out: list[Outgoing]) -> None:
        probe.indirect_sent = True
        rows = self._table.rows
        candidates = [node for node in self._table.current_view()
                      if node != probe.target and rows[node].status == "alive"]
        helpers = self._rng.sample(candidates, min(self.config.indirect_checks, len(candidates)))
        for helper in helpers:
            out.append(self._to(helper, PingReq(probe.seq, probe.target, self._piggyback(0))))
        probe.helpers = frozenset(helpers)
        # and once more directly (memberlist's TCP fallback ping): a lone lost ping or ack must not make a suspect
        out.append(self._to(probe.target, Ping(probe.seq, probe.target, self._buddy(probe.target))))

    def _send_due_nacks(self, now: float, out: list[Outgoing]) -> None:
        while self._relays:
            seq, relay = next(iter(self._relays.items()))  # all share one timeout: the first is the earliest
            if relay.nack_at > now:
                return
            del self._relays[seq]
            out.append(self._to(relay.requester, Nack(relay.their_seq)))

    # -- the probe order --------------------------------------------------------------------------------------

    def probe_soon(self, node: str, now: float) -> None:
        """Probe `node` next, as soon as the probe in flight (if any) ends (`Swim.probe_soon`)."""
        row = self._table.rows.get(node)
        probe = self._probe
        if row is None or row.status not in UP or (probe is not None and probe.target == node):
            return
        self._order.insert(self._order_at, node)
        if probe is None:
            self._next_probe_at = min(self._next_probe_at, now)

    def on_up(self, node: str) -> None:
        """A member came up: with the full view, probe it within this pass, as memberlist does."""
        if len(self._table.rings) <= self.config.view_threshold:
            self._order.insert(self._rng.randint(self._order_at, len(self._order)), node)

    def _next_target(self) -> str | None:
        """Round-robin over a shuffled list of the view, reshuffled at each pass (module docstring)."""
        view = self._table.current_view()
        partial = len(self._table.rings) > self.config.view_threshold
        for _ in range(2):
            while self._order_at < len(self._order):
                node = self._order[self._order_at]
                self._order_at += 1
                row = self._table.rows.get(node)
                if row is not None and row.status in UP and (not partial or node in self._table.view_set):
                    return node
            self._order = list(view)
            self._rng.shuffle(self._order)
            self._order_at = 0
        return None

    # -- messages ---------------------------------------------------------------------------------------------

    def serve(self, now: float, sender: str, request: PingReq, out: list[Outgoing]) -> None:
        """Probe `request.target` for `sender` under a seq of our own; its ack or our nack goes back later."""
        row = self._table.rows.get(request.target)
        if row is None or len(self._relays) >= MAX_RELAYS:
            return
        seq = self._new_seq()
        self._relays[seq] = _Relay(sender, row.node, request.seq, now + self.config.probe_timeout)
        out.append(self._to(row.node, Ping(seq, row.node, self._piggyback(0))))

    def on_ack(self, sender: str, ack: Ack, out: list[Outgoing]) -> None:
        """An ack ends our probe (from its target or a helper we asked) or is relayed (from a relay's target)."""
        probe = self._probe
        if probe is not None and ack.seq == probe.seq and (sender == probe.target or sender in probe.helpers):
            self._probe = None
            self._adjust_health(-1)
            return
        relay = self._relays.get(ack.seq)
        if relay is not None and sender == relay.target:
            del self._relays[ack.seq]
            out.append(self._to(relay.requester, Ack(relay.their_seq, self._piggyback(0))))

    def on_nack(self, sender: str, nack: Nack) -> None:
        """A helper we asked heard nothing: it, at least, is reachable (counted once per helper)."""
        probe = self._probe
        if probe is not None and nack.seq == probe.seq and sender in probe.helpers:
            probe.nacked |= {sender}

    # -- small helpers ----------------------------------------------------------------------------------------

    def _buddy(self, target: str) -> tuple[Update, ...]:
        """A ping's piggyback: a suspect first hears that it is suspected (Lifeguard's buddy system)."""
        row = self._table.rows[target]
        buddy = (self._table.update_of(row, self.node),) if row.status == "suspect" else ()
        return buddy + self._piggyback(len(buddy))

    def _new_seq(self) -> int:
        self._seq = (self._seq + 1) & MAX_NUMBER
        return self._seq

"""SWIM membership with Lifeguard: who is in the mesh, judged by probes instead of all-to-all heartbeats.

Why: with all-to-all heartbeats every node sends N − 1 messages per interval and judges each peer alone, so a
node's traffic grows with N and every lossy link is one more chance of a false death. Here a node's load is
constant: each protocol period it probes one member (round-robin over a shuffled list); a missing ack makes it
ask `indirect_checks` other members to probe (ping-req), and ping once more itself, before it suspects anyone. A
suspicion becomes a death only after a timeout, during which the suspect can refute it with a higher
incarnation. Changes ride on the protocol's own messages (piggyback), each sent λ · ⌈log10(N + 1)⌉ times, and a
gossip round every `gossip_interval` pushes pending ones to `gossip_fanout` members. Every push-pull period a
node sends a digest of its table to a random member (sometimes to a dead one: that is how a healed partition
finds its other half); differing digests trigger a full state exchange. That anti-entropy is
`core/swim_sync.py`'s `AntiEntropy`, which `Swim` ticks and hands the `Sync` messages; it applies a partner's
table through `Swim`, which holds back the news it makes so that the push-pull decides how they travel.

This module is the protocol: the messages, the timers and this node's own incarnation and health. What the node
believes of the others (the rows, the digest, the precedence rules, suspicions and the view) is
`core/swim_table.py`'s `MemberTable`, which `Swim` feeds and reads; it calls back for news to spread, members
that came up (probed within this pass) and what is said of this node (refuted here). The failure detector
(this node's probes, their round-robin order, the ping-reqs it serves) is `core/swim_probe.py`'s `Prober`,
which `Swim` ticks and hands the probe messages; it reads and moves the health kept here.

Lifeguard, as HashiCorp memberlist has it:
- a suspicion's timeout starts at `suspicion_max_mult` times its floor and shrinks as independent members
  confirm it (`core/swim_table.py`): one slow link cannot kill a node, a crash seen by several is declared fast;
- a ping to a suspect carries the suspicion (buddy system), so the suspect refutes on its next probe;
- local health (`Swim.health`, 0 = healthy): a node whose helpers' nacks go missing, which had to refute a
  suspicion of itself, or whose own timers fire late (it was paused or starved of CPU), is probably the slow
  one; it stretches its own probe period and timeout by `health + 1` and does not accuse the member it was
  probing while it was late.

Partial views (`core/swim_view.py`): up to `view_threshold` (64) live members a node probes, gossips to and
links to every member; above it, to at most 2 × `view_rings` ring neighbours. Push-pull and replies may reach
anyone (short-lived links). The membership table always lists every node.

Only a node raises its own incarnation (to refute, to leave), and only a node can say it left; the rest of the
precedence rules are in `core/swim_table.py`.

Pure (h11 style): no sockets, clock or threads; time is passed in and randomness is an injected
`random.Random`. The caller sends what `tick`, `receive`, `join` and `leave` return, calls `tick` again by
`next_wakeup()`, and reads liveness changes with `take_changes()`. Messages cross the wire through
`core/swim_wire.py` (`Malformed` for anything else).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from zmqllm.core.swim_config import SwimConfig
from zmqllm.core.swim_probe import Prober
from zmqllm.core.swim_rumors import RumorQueue
from zmqllm.core.swim_sync import AntiEntropy
from zmqllm.core.swim_table import Change, Member, MemberTable
from zmqllm.core.swim_wire import (MAX_INCARNATION_STEP, MAX_META_BYTES, MAX_NODE_ID, MAX_NUMBER, MAX_PIGGYBACK,
                                   MAX_SYNC_STATES, UP, Ack, Gossip, Malformed, Message, Nack, Outgoing, Ping,
                                   PingReq, Status, Sync, Update, from_fields, to_fields)

__all__ = ["UP", "Change", "Malformed", "Member", "Message", "Outgoing", "Status", "Swim", "SwimConfig", "Update",
           "from_fields", "to_fields"]

class Swim:
    """One node's part in the protocol, over its membership table. Not thread-safe: one owner calls it."""

    def __init__(self, node: str, address: str, now: float, rng: random.Random,
                 config: SwimConfig = SwimConfig(), meta: bytes = b"") -> None:
        if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_ID or len(meta) > MAX_META_BYTES:
            raise ValueError(f"node id must be 1..{MAX_NODE_ID} characters and meta at most {MAX_META_BYTES} bytes")
        self.node, self.address, self.config = node, address, config
        self.incarnation = 0
        self.health = 0
        """Lifeguard's local health: 0 is healthy; probe period and timeout are stretched by health + 1."""
        self.refused = 0
        """Messages refused as implausible, and news of members past `max_members`; `last_refusal` says why."""
        self.last_refusal = ""
        self._rng = rng
        self._meta, self._meta_version = meta, 0
        self._left = False
        self._table = MemberTable(node, config, spread=self._spread, on_up=self._on_up, about_me=self._about_me,
                                  refuse=self._refuse)
        self._rumors = RumorQueue()
        self._news: list[Update] | None = None
        self._seeds: list[str] = []
        self._next_join_at = math.inf
        self._prober = Prober(node, self._table, config, rng, now, health=lambda: self.health,
                              adjust_health=self._adjust_health, piggyback=self._piggyback, to=self._to)
        self._next_gossip_at = now
        # after the prober: it draws the first push-pull time, and seeded runs depend on the order of draws
        self._anti_entropy = AntiEntropy(node, self._table, config, rng, now, rumors=self._rumors, to=self._to,
                                         full_state=self._full_state, apply_holding_news=self._apply_holding_news)
        self._handlers = {Ping: self._on_ping, PingReq: self._on_ping_req, Ack: self._on_ack, Nack: self._on_nack,
                          Gossip: self._on_gossip, Sync: self._anti_entropy.on_sync}

    # -- joining, leaving, metadata ---------------------------------------------------------------------------

    def join(self, now: float, seeds: Iterable[str]) -> list[Outgoing]:
        """Push-pull with each seed address: a seed answers with its whole table and spreads this node's arrival.
        Repeated every `join_retry_interval` (by `tick`) until some member is known."""
        self._seeds = list(seeds)
        self._next_join_at = now + self.config.join_retry_interval
        hello = Sync(self.digest, (self._my_update(),), reply=True)
        return [Outgoing("", seed, hello) for seed in self._seeds]

    def preload(self, members: Iterable[tuple[str, str]], now: float) -> None:
        """Start as if a push-pull had listed these (node, address) pairs alive at incarnation 0, reporting no
        changes: simulations and tests begin from a formed mesh without N joins."""
        self._table.preload(members, now)
        self._anti_entropy.spread_push_pull(now)

    def leave(self, now: float) -> list[Outgoing]:
        """Say goodbye: `left` under a new incarnation, sent at once to the active view and gossiped until its
        retransmissions run out (keep calling `tick` for a few gossip intervals before closing the sockets)."""
        if self._left:
            return []
        self._left = True
        self._set_my_incarnation(self.incarnation + 1)
        bye = self._my_update()
        self._rumors.add(bye)
        self._prober.stop()
        return [self._to(node, Gossip((bye,))) for node in self._table.current_view()]

    def set_meta(self, meta: bytes) -> None:
        """Publish new metadata (models, load): a new version, gossiped like any update."""
        if len(meta) > MAX_META_BYTES:
            raise ValueError(f"meta is {len(meta)} bytes; at most {MAX_META_BYTES}")
        self._meta, self._meta_version = meta, self._meta_version + 1
        self._rumors.add(self._my_update())

    # -- reading the table ------------------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member this node knows (dead and departed ones until `forget_after`), this node first."""
        me = Member(self.node, self.address, "left" if self._left else "alive", self.incarnation, self._meta,
                    self._meta_version, 0.0)
        return [me] + self._table.members()

    def member(self, node: str) -> Member | None:
        """One member's row (not this node's own); None for a node not (or no longer) listed."""
        row = self._table.rows.get(node)
        return None if row is None else row.as_member()

    def state_of(self, node: str) -> Status | None:
        """A member's state; None for a node not (or no longer) listed."""
        if node == self.node:
            return "left" if self._left else "alive"
        row = self._table.rows.get(node)
        return row.status if row is not None else None

    def active_view(self) -> list[str]:
        """The members this node keeps links to: every live member up to `view_threshold`, else at most
        2 × `view_rings` ring neighbours (module docstring)."""
        return list(self._table.current_view())

    @property
    def digest(self) -> int:
        """64-bit fingerprint of (node, incarnation, up or down) over the table: equal means in sync."""
        return self._table.digest

    def take_changes(self) -> list[Change]:
        """Liveness changes since the last call, oldest first."""
        return self._table.take_changes()

    def take_meta_changes(self) -> set[str]:
        """Members whose metadata (models, load) changed since the last call, liveness aside."""
        return self._table.take_meta_changes()

    def next_wakeup(self) -> float:
        """The latest time the next `tick` is due (calling it earlier is harmless)."""
        times = [] if self._left else [self._anti_entropy.next_wakeup()]
        times += [self._prober.next_wakeup(), self._table.next_deadline()]
        if self._rumors:
            times.append(self._next_gossip_at)
        if self._seeds:
            times.append(self._next_join_at)
        return min(times, default=math.inf)

    # -- the clock --------------------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """Do what is due by `now`: probe rounds, nacks, suspicion timeouts, gossip and anti-entropy."""
        out: list[Outgoing] = []
        if self._seeds and now >= self._next_join_at:
            if self._table.rows:
                self._seeds = []  # a seed answered
            else:
                out += self.join(now, self._seeds)
        if not self._left:
            self._prober.settle(now, out)
            self._expire_suspicions(now, out)
            self._prober.start_due(now, out)
            self._anti_entropy.tick(now, out)
        if self._rumors and now >= self._next_gossip_at:
            self._gossip_round(now, out)
        return out

    def probe_soon(self, node: str, now: float) -> None:
        """A hint from the transport that `node` may be gone (its connection closed): probe it next, as soon as
        the probe in flight (if any) ends, instead of in its turn. The verdict is still the protocol's: a node
        whose connection merely dropped answers, and nothing changes. Every node linked to a crashed one gets
        the hint at once, so the suspicion gathers its confirmations at once too."""
        if not self._left:
            self._prober.probe_soon(node, now)

    def _expire_suspicions(self, now: float, out: list[Outgoing]) -> None:
        for address, verdict in self._table.expire_suspicions(now):
            out.append(Outgoing(verdict.node, address, Gossip((verdict,))))  # if it lives, it refutes at once

    def _gossip_round(self, now: float, out: list[Outgoing]) -> None:
        self._next_gossip_at = now + self.config.gossip_interval
        view = self._table.current_view()
        for node in self._rng.sample(view, min(self.config.gossip_fanout, len(view))):
            piggyback = self._piggyback()
            if not piggyback:
                return
            out.append(self._to(node, Gossip(piggyback)))

    # -- messages ---------------------------------------------------------------------------------------------

    def receive(self, now: float, sender: str, message: Message) -> list[Outgoing]:
        """Handle a message from `sender` (a node id the transport vouches for). Fields are well-formed by
        construction (`from_fields` checks what comes off the wire); what depends on this node's state is
        checked here, and an implausible message is refused whole, before anything is applied (`refused`)."""
        handler = self._handlers.get(type(message))
        problem = self._implausible(sender, message) if handler is not None else "not a SWIM message"
        if problem:
            self._refuse(f"from {sender!r}: {problem}")
            return []
        out: list[Outgoing] = []
        incarnation = self.incarnation
        handler(now, sender, message, out)
        if self.incarnation != incarnation or self._doubted_in_the_past(message):
            # the one who doubted us hears the refutation first (again, if it missed the first one)
            out.append(self._to(sender, Gossip((self._my_update(),))))
        row = self._table.rows.get(sender)
        if row is not None and row.status == "dead":  # it talks, so it lives
            self._anti_entropy.heard_from_the_dead(now, row, out)
        return out

    def _doubted_in_the_past(self, message: Message) -> bool:
        """The message says this node is dead or gone at an incarnation it has already outbid: its sender missed
        the refutation, and nothing else would ever tell it (a dead row hears no rumors of the member's probes).
        A stale suspicion needs no answer: the refutation's rumor overtakes it, and answering every piggybacked
        copy of one doubled the gossip at 5 % loss."""
        updates = message.states if type(message) is Sync else getattr(message, "piggyback", ())
        return not self._left and any(update.node == self.node and update.status in ("dead", "left")
                                      and update.incarnation < self.incarnation for update in updates)

    def _implausible(self, sender: str, message: Message) -> str | None:
        if sender == self.node:
            return "a message under this node's own id"
        kind = type(message)
        if kind in (PingReq, Nack) and sender not in self._table.rows:
            return f"{message.KIND} from an unknown node"
        updates = message.states if kind is Sync else () if kind is Nack else message.piggyback
        if len(updates) > (MAX_SYNC_STATES if kind is Sync else MAX_PIGGYBACK):
            return f"{message.KIND} carries {len(updates)} updates"
        for update in updates:
            if update.incarnation <= MAX_INCARNATION_STEP:
                continue  # plausible whatever we know
            row = self._table.rows.get(update.node)
            known = self.incarnation if update.node == self.node else row.incarnation if row is not None else None
            if known is not None and update.incarnation > known + MAX_INCARNATION_STEP:
                return f"incarnation {update.incarnation} of {update.node} is implausible (known: {known})"
        return None

    def _on_ping(self, now: float, sender: str, ping: Ping, out: list[Outgoing]) -> None:
        if ping.target != self.node:
            return  # meant for whoever had this address before
        self._table.merge(ping.piggyback, now)
        out.append(self._to(sender, Ack(ping.seq, self._piggyback())))

    def _on_ping_req(self, now: float, sender: str, request: PingReq, out: list[Outgoing]) -> None:
        self._table.merge(request.piggyback, now)
        if not self._left:
            self._prober.serve(now, sender, request, out)

    def _on_ack(self, now: float, sender: str, ack: Ack, out: list[Outgoing]) -> None:
        self._table.merge(ack.piggyback, now)
        self._prober.on_ack(sender, ack, out)

    def _on_nack(self, now: float, sender: str, nack: Nack, out: list[Outgoing]) -> None:
        self._prober.on_nack(sender, nack)

    def _on_gossip(self, now: float, sender: str, gossip: Gossip, out: list[Outgoing]) -> None:
        self._table.merge(gossip.piggyback, now)

    # -- the table's callbacks ------------------------------------------------------------------------------------

    def _spread(self, update: Update) -> None:
        if self._news is not None:
            self._news.append(update)  # a push-pull decides how its news travel
        else:
            self._rumors.add(update)

    def _apply_holding_news(self, updates: Iterable[Update], now: float) -> list[Update]:
        """Apply a push-pull's updates, returning the news they made instead of spreading them (`AntiEntropy`)."""
        news: list[Update] = []
        self._news = news
        for update in updates:
            self._table.apply(update, now)
        self._news = None
        return news

    def _on_up(self, node: str) -> None:
        """A member came up: probe it soon (the table is built before the prober, so this forwards)."""
        self._prober.on_up(node)

    def _about_me(self, update: Update) -> None:
        """Refute: anything but `alive` said of this node at its incarnation or above is outbid by a new
        incarnation; an alive update above it is a past life of this node (a restart), outbid the same way."""
        if self._left or update.incarnation < self.incarnation or update.incarnation >= MAX_NUMBER:
            return  # (one at the wire's ceiling cannot be outbid; it only comes from a forger)
        if update.status == "alive":
            if update.incarnation == self.incarnation:
                return
        else:
            self._adjust_health(1)  # Lifeguard: being suspected hints that this node is the slow one
        self._set_my_incarnation(update.incarnation + 1)
        self._rumors.add(self._my_update())

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        self.last_refusal = reason

    # -- small helpers --------------------------------------------------------------------------------------------

    def _piggyback(self, reserved: int = 0) -> tuple[Update, ...]:
        if not self._rumors:
            return ()
        limit = self.config.retransmit_limit(len(self._table.rings))
        return tuple(self._rumors.take(self.config.max_piggyback - reserved, limit))

    def _my_update(self) -> Update:
        if self._left:
            return Update(self.node, "left", self.incarnation, self.node)
        return Update(self.node, "alive", self.incarnation, self.node, self.address, self._meta_version, self._meta)

    def _full_state(self) -> tuple[Update, ...]:
        return (self._my_update(), *self._table.full_state())

    def _set_my_incarnation(self, incarnation: int) -> None:
        self._table.set_own(incarnation, up=not self._left)
        self.incarnation = incarnation

    def _adjust_health(self, delta: int) -> None:
        self.health = min(max(self.health + delta, 0), self.config.health_max - 1)

    def _to(self, node: str, message: Message) -> Outgoing:
        row = self._table.rows.get(node)
        return Outgoing(node, row.address if row is not None else "", message)

"""SWIM's anti-entropy: push-pull of whole tables, and finding the other half of a healed partition.

Why a module of its own: gossip spreads each change a bounded number of times, so a node that missed them all
(it was cut off, paused, or just joined) would never catch up. Push-pull is the repair, with its own timers and
its own rules for whose word counts when two tables disagree. `core/swim.py` keeps the rest of the protocol
(gossip, refutation, this node's own row) and hands this the `Sync` messages; `core/swim_table.py` holds what
the tables say.

Every push-pull period a node sends a digest of its table to a random member, sometimes (`reconnect_share`) to
a dead one: that is how a healed partition finds its other half. Every `reconnect_interval` it also sends one
to a member that died within `reconnect_window`. Differing digests trigger a full state exchange.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from zmqllm.core.swim_config import SwimConfig
from zmqllm.core.swim_rumors import RumorQueue
from zmqllm.core.swim_table import MemberTable, Row
from zmqllm.core.swim_wire import UP, Gossip, Message, Outgoing, Sync, Update

__all__ = ["AntiEntropy"]


class AntiEntropy:
    """This node's push-pulls and reconnects, and what it does with a table it is sent.

    `Swim` owns it, ticks it while this node has not left, and hands it `Sync` messages and messages from
    members held dead; it reaches `Swim` only through the callbacks: `to(node, message)` addresses a message,
    `full_state()` lists this node's own row and the table's, and `apply_holding_news(updates, now)` applies
    updates to the table and returns the news they made instead of spreading them (a push-pull decides how its
    news travel: into `rumors`, or not at all).

    Built after the prober: the first push-pull time is a draw from `rng`, and seeded runs depend on its turn."""

    def __init__(self, node: str, table: MemberTable, config: SwimConfig, rng: random.Random, now: float, *,
                 rumors: RumorQueue, to: Callable[[str, Message], Outgoing],
                 full_state: Callable[[], tuple[Update, ...]],
                 apply_holding_news: Callable[[Iterable[Update], float], list[Update]]) -> None:
        self.node, self.config = node, config
        self._table, self._rng, self._rumors = table, rng, rumors
        self._to, self._full_state, self._apply_holding_news = to, full_state, apply_holding_news
        self._next_reconnect_at = now
        self._next_push_pull_at = now + rng.uniform(0, config.push_pull_interval)
        self._next_catch_up_at = now

    def spread_push_pull(self, now: float) -> None:
        """The next push-pull at a random point of one period for the mesh as it is now (after a preload), so
        that a mesh's nodes do not all push-pull at once."""
        period = self.config.push_pull_period(len(self._table.rings))
        self._next_push_pull_at = now + self._rng.uniform(0, period)

    def next_wakeup(self) -> float:
        """When a push-pull or a reconnect is next due."""
        if self._table.recent_deaths:
            return min(self._next_push_pull_at, self._next_reconnect_at)
        return self._next_push_pull_at

    def tick(self, now: float, out: list[Outgoing]) -> None:
        """A push-pull, then a reconnect, if due by `now`."""
        if now >= self._next_push_pull_at:
            self._push_pull(now, out)
        if self._table.recent_deaths and now >= self._next_reconnect_at:
            self._reconnect(now, out)

    def _push_pull(self, now: float, out: list[Outgoing]) -> None:
        self._next_push_pull_at = now + self.config.push_pull_period(len(self._table.rings))
        self._table.forget_departed(now)
        if self._table.down and self._rng.random() < self.config.reconnect_share:
            partner = self._rng.choice(sorted(self._table.down))
        elif len(self._table.rings) > 1:
            partner = self.node
            while partner == self.node:
                partner = self._table.rings.pick(self._rng)
        else:
            return
        out.append(self._to(partner, Sync(self._table.digest, (), reply=True)))

    def _reconnect(self, now: float, out: list[Outgoing]) -> None:
        """A digest to one member that died lately: if it lives (a partition healed, a pause ended), the push-pull
        that follows tells both sides; if it crashed, one small message is lost."""
        self._next_reconnect_at = now + self.config.reconnect_interval
        recent, rows = self._table.recent_deaths, self._table.rows
        while recent and (now - recent[0][0] >= self.config.reconnect_window or recent[0][1] not in self._table.down
                          or rows[recent[0][1]].since != recent[0][0]):
            recent.popleft()
        if recent:
            since, node = recent[self._rng.randrange(len(recent))]
            if node in self._table.down and rows[node].since == since:
                out.append(self._to(node, Sync(self._table.digest, (), reply=True)))

    def heard_from_the_dead(self, now: float, row: Row, out: list[Outgoing]) -> None:
        """A member this node holds dead sent it something. Usually it should hear it was declared dead, and
        refute. But a node that holds dead more members than it has live ones was probably cut off itself:
        it asks the sender for its table instead (at most once per `resync_interval`), and defers to it
        (`on_sync`) rather than make every member it wrongly buried refute."""
        if len(self._table.down) <= len(self._table.rings):
            out.append(Outgoing(row.node, row.address, Gossip((self._table.update_of(row, self.node),))))
        elif now >= self._next_catch_up_at:
            self._next_catch_up_at = now + self.config.resync_interval
            out.append(Outgoing(row.node, row.address, Sync(self._table.digest, (), reply=True)))

    def on_sync(self, now: float, sender: str, sync: Sync, out: list[Outgoing]) -> None:
        """A digest alone asks for our state when it differs; a state with `reply` (a join, or the second leg)
        is answered with ours, which asks for theirs only if they sent none.

        Where the tables disagree on whether a member is dead at the same incarnation, neither side's word is
        first-hand. The smaller side of a healed partition defers: a node that holds dead more of the
        partner's live members than it has live members itself was the one cut off, and takes the partner's
        word for them quietly (no rumor: the rest of the mesh never doubted them). Otherwise the member is told
        it was declared dead and refutes if it lives (one refutation per member in dispute, as SWIM has it),
        while this node's own probes judge it. Without the deferral, every member the cut-off side buried
        refutes, each refutation a rumor to every node: O(N²) messages for a long partition of a big mesh
        (simulated: 3 nodes cut off from 30 for 3 minutes buried the 27 others; on the heal all 27 refuted
        without it, none with it). memberlist suspects the member instead, which sets off a mesh-wide
        suspicion storm.

        News are passed on as rumors, except when there are many (`resync_changes`: this node joined or was cut
        off): then members it had not heard of are passed on as tables (another push-pull follows within
        `resync_interval`), and only changes to members it knew (refutations) as rumors."""
        rows, my_live = self._table.rows, len(self._table.rings)
        they_buried: list[tuple[Row, Update]] = []  # live here, dead there
        we_buried: list[tuple[Row, Update]] = []  # dead here, live there at the same incarnation
        rest: list[Update] = []
        unknown: set[str] = set()
        for update in sync.states:
            row = rows.get(update.node)
            if row is None:
                unknown.add(update.node)
            if row is not None and row.status in UP and update.status == "dead" \
                    and update.incarnation >= row.incarnation:
                they_buried.append((row, update))
            elif row is not None and row.status == "dead" and update.status in UP \
                    and update.incarnation == row.incarnation:
                we_buried.append((row, update))
            else:
                rest.append(update)
        their_live = sum(1 for update in sync.states if update.status in UP)
        they_were_cut_off = len(they_buried) > their_live  # they defer when they hear us: nobody need refute
        news = self._apply_holding_news([update for update in rest
                                         if not (they_were_cut_off and update.node == self.node)], now)
        if not they_were_cut_off:
            for row, update in they_buried:
                out.append(Outgoing(row.node, row.address, Gossip((update,))))
        if len(we_buried) > my_live:
            for row, update in we_buried:
                self._table.revive(row, update, now)
        else:
            for row, _ in we_buried:
                out.append(Outgoing(row.node, row.address, Gossip((self._table.update_of(row, self.node),))))
        bulk = len(news) + len(they_buried) + len(we_buried) >= self.config.resync_changes
        if bulk:
            self._next_push_pull_at = min(self._next_push_pull_at, now + self.config.resync_interval)
        for update in news:
            # members new to this node are old news to the mesh; a refutation is news to everyone, and must
            # spread even from a node that learned it by push-pull
            if not bulk or update.node not in unknown:
                self._rumors.add(update)
        if sync.reply and (sync.states or sync.digest != self._table.digest):
            out.append(self._to(sender, Sync(self._table.digest, self._full_state(), reply=not sync.states)))

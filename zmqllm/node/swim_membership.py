"""SWIM in the daemon (`membership = "swim"`): `core/swim.py` driven by the node's clock, its messages carried
on the node's sockets, its verdicts applied to the node's peer table, and the node's links kept to SWIM's
active view.

Why a separate judge: with heartbeats every node must link to and hear from every other, O(N) sockets and
messages per node. Here liveness comes from probes and gossip, so a node links only to its active view
(everyone up to `view_threshold` live members, at most 2 × `view_rings` ring neighbours above) and learns every
other node's models and load from gossiped metadata (`core/swim_meta.py`). The scheduler may still pick any
node: sending to a node without a link dials one on demand (`Node.link_for`), closed again once idle.

What does not change: HEARTBEATs still flow on the links there are (fresh load and cache summaries for the
scheduler, every 0.5 s), a closed connection still moves a dead executor's tasks at once (socket monitor), and
`BYE` still marks a leaving node at once. Only the table's verdicts (suspect, dead, alive again) come from SWIM.

Who may send: every SWIM message must come on its sender's own connection (connection id = `src`); on a
node's DEALER, only from the node that answered `WELCOME` there. `core/swim_wire.from_fields` refuses anything
malformed (counted in the node's `dropped_frames`), and `Swim.receive` refuses what is implausible.
"""

from __future__ import annotations

import logging
import random

from zmqllm.core import protocol
from zmqllm.core.membership import Identity, Load, NameTaken
from zmqllm.core.swim import UP, Change, Malformed, Outgoing, Swim, SwimConfig, from_fields, to_fields
from zmqllm.core.swim_meta import decode_meta, encode_meta
from zmqllm.node.roles import SwimHost

log = logging.getLogger(__name__)

MAX_WAIT_S = 0.05
"""Longest sleep of the SWIM loop: a message that arrives may make something due sooner than planned."""
META_CHECK_S = 0.25
"""How often this node looks whether its identity or load changed (reading the load is not free)."""
META_INTERVAL_S = 1.0
"""This node's load is republished at most once a second (an identity change within `META_CHECK_S`): each new
version is a rumor every member passes on a few times."""
LINK_IDLE_S = 5.0
"""A link outside the active view (dialled on demand to run a task, or for a push-pull) is closed after this
long without traffic and without a task of this origin running there."""
INBOUND_S = 2.0
"""A node heard on this node's ROUTER this recently has its DEALER connected here: a reply to it goes back
that way instead of through a new link."""
SILENT_INTERVALS = 1.5
"""Heartbeat intervals without a word on a link after which its peer is probed out of turn (heartbeats flow on
every link). A late beat costs one extra probe, which is answered."""
FRESH_HEARTBEAT_S = 2.0
"""A peer heard first-hand this recently keeps its heartbeat's load (with its cache summary) over gossip's."""


class SwimMembership:
    """One node's SWIM: started by `Node.run`, fed by its sockets, ticked by its own loop."""

    def __init__(self, node: SwimHost, config: SwimConfig, seeds: tuple[str, ...] = (),
                 rng: random.Random | None = None) -> None:
        self.node = node
        self.config = config
        self.seeds = seeds
        self.swim: Swim | None = None
        self._rng = rng or random.Random()
        self._meta = b""
        self._meta_identity: Identity | None = None
        """The identity the last published metadata said: a change of it is published at once."""
        self._meta_at = 0.0
        self._next_links_at = 0.0
        self._next_meta_at = 0.0
        self._hinted: set[str] = set()
        """Linked peers whose silence already made this node probe them out of turn (once per silence)."""
        self._inbound: dict[str, float] = {}
        """Node id → when it last sent on this node's ROUTER (`INBOUND_S`)."""

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Join through the seeds (`peers`): a push-pull with each, repeated until one answers."""
        node = self.node
        now = node.clock()
        self._meta_identity = node.identity()
        self._meta = encode_meta(self._meta_identity, node.load())
        self._meta_at = now
        self.swim = Swim(node.node_id, node.endpoint, now, self._rng, self.config, self._meta)
        self._send_all(self.swim.join(now, self.seeds))

    def leave(self) -> None:
        """Say `left` to the active view (the BYE that follows reaches every link as well)."""
        if self.swim is not None:
            self._send_all(self.swim.leave(self.node.clock()))

    def round(self) -> float:
        """Do what SWIM has due, apply its verdicts, republish this node's metadata, keep links to the view;
        returns the wait to the next round."""
        swim = self.swim
        if swim is None:
            return MAX_WAIT_S
        now = self.node.clock()
        if now >= self._next_meta_at:
            self._next_meta_at = now + META_CHECK_S
            self._publish_meta(swim, now)
        self._send_all(swim.tick(now))
        self._apply(swim, now)
        if now >= self._next_links_at:
            self._next_links_at = now + self.config.probe_interval
            self._keep_links(swim, now)
        self._probe_the_silent(swim, now)
        return max(0.0, min(swim.next_wakeup() - self.node.clock(), MAX_WAIT_S))

    # -- receiving --------------------------------------------------------------------------------------------

    def on_message(self, sender: str, message: protocol.Message, inbound: bool = False) -> None:
        """A SWIM message from `sender`, a node id its connection vouches for; `inbound`: it came on this
        node's ROUTER (the sender's DEALER), not on a link of this node."""
        swim = self.swim
        if swim is None:
            return
        if inbound:
            self._inbound[sender] = self.node.clock()
        try:
            parsed = from_fields(message.type, dict(message.fields))
        except Malformed as exc:
            self.node.dropped_frames += 1
            self.node.say_quietly(sender, f"refused {message.type}: {exc}")
            return
        now = self.node.clock()
        self._send_all(swim.receive(now, sender, parsed))
        self._apply(swim, now)

    def connection_closed(self, node_id: str) -> None:
        """This node's link to `node_id` lost its connection (the process died, or the network dropped it):
        probe it now rather than in its turn (`Swim.probe_soon`)."""
        if self.swim is not None:
            self.swim.probe_soon(node_id, self.node.clock())

    def heard(self, identity: Identity, load: Load | None) -> None:
        """A HEARTBEAT or HELLO on a link: fresher identity and load than gossip's, liveness left to SWIM."""
        table, swim = self.node.table, self.swim
        if table is not None and swim is not None and swim.state_of(identity.node_id) in UP:
            table.refresh(identity, load, self.node.clock(), first_hand=True)

    # -- sending ----------------------------------------------------------------------------------------------

    def _send_all(self, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            self._send(out)

    def _send(self, out: Outgoing) -> None:
        """On this node's link to the member (dialled if need be); a reply to a node not listed yet goes back
        on the connection its request came on (the ROUTER: its DEALER's id is its node id)."""
        node = self.node
        kind, fields = to_fields(out.message)
        link = node.links.get(out.address) if out.address else None
        if link is not None and link.node_id not in (None, out.to) and out.to:
            link = None  # another process answers at that address now
        if link is None and out.to and node.clock() - self._inbound.get(out.to, -INBOUND_S) < INBOUND_S:
            node.reply(out.to.encode(), kind, **fields)
            return
        if link is None and out.address:  # a member, or a seed on a join
            link = node.dial(out.address, seed=out.address in self.seeds)
        if link is not None:
            node.send_on_link(link, kind, protocol.encode(node.message(kind, **fields)))
        elif out.to:
            node.reply(out.to.encode(), kind, **fields)

    # -- the peer table follows SWIM ------------------------------------------------------------------------------

    def _apply(self, swim: Swim, now: float) -> None:
        for change in swim.take_changes():
            self._apply_change(swim, change, now)
        for node_id in swim.take_meta_changes():
            self._refresh_from_meta(swim, node_id, now)

    def _apply_change(self, swim: Swim, change: Change, now: float) -> None:
        node, table = self.node, self.node.table
        if table is None:
            return
        if change.new == "alive" and (change.old is None or change.old in ("dead", "left")
                                      or table.get(change.node) is None):
            member = swim.member(change.node)
            decoded = decode_meta(change.node, member.address, member.meta) if member is not None else None
            if decoded is None:
                log.warning("member %s gossips no readable identity: not listed", change.node)
                return
            identity, load = decoded
            try:
                node.observe_identity(identity, load)
            except NameTaken as exc:
                # told on its own connection, if it has one here: from its seed, that stops it (as a HELLO's
                # refusal does), from anyone else it closes that link
                node.say_quietly(change.node, f"member {change.node} not listed: {exc}")
                node.reply_error(change.node.encode(), "name_taken", f"refused by {node.identity().name}: {exc}")
            return
        transition = table.judge(change.node, change.new, now)
        if transition is not None:
            node.on_transition(transition)

    def _refresh_from_meta(self, swim: Swim, node_id: str, now: float) -> None:
        table, member = self.node.table, swim.member(node_id)
        peer = table.get(node_id) if table is not None else None
        if peer is None or member is None:
            return
        decoded = decode_meta(node_id, member.address, member.meta)
        if decoded is None:
            return
        identity, load = decoded
        keep_heartbeat_load = now - peer.last_seen < FRESH_HEARTBEAT_S
        table.refresh(identity, None if keep_heartbeat_load else load, now, first_hand=False)

    def _publish_meta(self, swim: Swim, now: float) -> None:
        node = self.node
        identity = node.identity()
        meta = encode_meta(identity, node.load())
        if meta == self._meta:
            return
        if identity != self._meta_identity or now - self._meta_at >= META_INTERVAL_S:
            self._meta, self._meta_identity, self._meta_at = meta, identity, now
            swim.set_meta(meta)

    def _probe_the_silent(self, swim: Swim, now: float) -> None:
        """A linked peer that has sent no heartbeat for `SILENT_INTERVALS` is probed out of turn: every node
        linked to a frozen one then accuses it within a period or two, and the suspicion reaches its floor at
        once instead of waiting for probes in turn (32 daemons: a freeze was judged in 3.2-5.8 s without this)."""
        table = self.node.table
        if table is None:
            return
        silent_s = SILENT_INTERVALS * self.config.probe_interval
        for link in self.node.links.values():
            peer = table.get(link.node_id) if link.node_id else None
            if peer is None or peer.state not in ("alive", "suspect"):
                continue
            if now - peer.last_seen < silent_s:
                self._hinted.discard(peer.node_id)
            elif peer.node_id not in self._hinted:
                self._hinted.add(peer.node_id)
                swim.probe_soon(peer.node_id, now)

    # -- links follow the active view -----------------------------------------------------------------------------

    def _keep_links(self, swim: Swim, now: float) -> None:
        """Dial the view's members; close other links once idle (never a seed's, nor one a task runs on)."""
        node = self.node
        view = set(swim.active_view())
        for node_id in view:
            member = swim.member(node_id)
            if member is not None and member.address not in node.links:
                node.dial(member.address)
        self._inbound = {sender: at for sender, at in self._inbound.items() if now - at < INBOUND_S}
        working = node.origin.busy_executor_ids()
        for link in list(node.links.values()):
            if link.seed or link.node_id is None or link.node_id in view or link.node_id in working:
                continue
            if now - link.used_at > LINK_IDLE_S:
                node.close_link(link, "outside the active view and idle")


"""SWIM's parameters: every timing and size, with its unit and why it has its default (docs/membership.md),
and the few that scale with the number of live members N."""

from __future__ import annotations

import math
from dataclasses import dataclass

from zmqllm.core.swim_wire import MAX_SYNC_STATES


@dataclass(frozen=True)
class SwimConfig:
    """Timing and sizes. Defaults: a 3-node LAN mesh judges a frozen peer dead in about 2 s (as today's
    heartbeat: 0.5 s, dead after 4 silent intervals), and 1,000 nodes with 2 % loss agree on a crash in ≤ 5 s."""

    probe_interval: float = 0.5
    """Seconds per protocol period (one probe), today's heartbeat interval."""
    probe_timeout: float = 0.2
    """Seconds to wait for a direct ack before asking helpers: LAN round trips take milliseconds, and the
    rest of the period (0.3 s) is left for the four hops of an indirect probe."""
    indirect_checks: int = 3
    """Helpers asked to probe a silent member: one lossy link alone no longer makes a suspect."""
    suspicion_mult: float = 2.0
    """Floor of the suspicion timeout in probe periods × max(1, log10 N): the time a suspect needs to hear of
    it and refute, growing with the gossip rounds a rumor takes to cross N nodes."""
    suspicion_max_mult: float = 4.0
    """A lone accusation waits this many floors; confirmations shrink it to the floor (Lifeguard)."""
    suspicion_confirmations: int = 3
    """Independent confirmations that bring the timeout down to its floor."""
    retransmit_mult: int = 4
    """Each update is piggybacked this many × ⌈log10(N + 1)⌉ times: enough to reach all N with high odds."""
    gossip_interval: float = 0.2
    """Seconds between gossip rounds while updates are pending (none are sent otherwise)."""
    gossip_fanout: int = 3
    """Members each gossip round goes to."""
    max_piggyback: int = 16
    """Updates packed into one outgoing message, so a message stays small whatever happens."""
    push_pull_interval: float = 10.0
    """Seconds between anti-entropy rounds (a digest; the full table only when digests differ)."""
    push_pull_scale_above: int = 32
    """Above this many live members the push-pull interval grows by one step per doubling (memberlist's
    scaling): a full-table exchange costs O(N) bytes, so its rate must fall as N grows."""
    join_retry_interval: float = 1.0
    """Seconds between join attempts until a seed answers (a join is one message, and messages get lost)."""
    resync_changes: int = 16
    """A push-pull that changed at least this many rows (a healed partition, a long pause) is followed by
    another one after `resync_interval`: bulk changes then travel as whole tables instead of rumor by rumor."""
    resync_interval: float = 1.0
    reconnect_share: float = 0.5
    """Share of anti-entropy rounds aimed at a dead member: how a healed partition finds its other half, however
    long it lasted (until the rows are forgotten)."""
    reconnect_interval: float = 1.0
    """Seconds between push-pulls aimed at one member that died less than `reconnect_window` ago, on top of
    the anti-entropy rounds: a short partition heals within seconds even where the push-pull period is a
    minute (N = 1,000). Costs one small message per second while such deaths are recent."""
    reconnect_window: float = 60.0
    """Seconds after a death during which its member is a fast reconnect target (a crashed node gets
    60 lost digests from each node that holds it dead; a partitioned one hears within seconds of the heal)."""
    health_max: int = 8
    """Local health scores run 0..health_max − 1; probe period and timeout are stretched by score + 1."""
    forget_after: float = 600.0
    """Seconds a dead or departed member stays listed (and a reconnect target) before its row is dropped."""
    view_threshold: int = 64
    """Live members above which the active view is partial (`core/swim_view.py`, docs/membership.md)."""
    view_rings: int = 6
    """Rings of the partial view: at most 2 × view_rings links."""
    max_members: int = MAX_SYNC_STATES
    """Rows a table holds at most (dead and departed ones included): news of more nodes is refused and counted,
    so a flood of made-up members cannot grow a node's memory without bound, and a whole table fits one
    push-pull."""

    def __post_init__(self) -> None:
        for name in ("probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval",
                     "join_retry_interval", "resync_interval", "forget_after", "reconnect_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError(f"probe_timeout ({self.probe_timeout}) must be shorter than probe_interval "
                             f"({self.probe_interval}): the rest of the period is the indirect probe's")
        for name in ("indirect_checks", "suspicion_confirmations", "gossip_fanout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("retransmit_mult", "max_piggyback", "health_max", "view_threshold", "view_rings",
                     "max_members", "push_pull_scale_above"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, got {getattr(self, name)}")
        if self.max_members > MAX_SYNC_STATES:
            raise ValueError(f"max_members ({self.max_members}) must fit one push-pull: at most {MAX_SYNC_STATES}")
        if self.suspicion_mult <= 0 or self.suspicion_max_mult < 1:
            raise ValueError("suspicion_mult must be positive and suspicion_max_mult at least 1")
        if not 0 <= self.reconnect_share <= 1:
            raise ValueError(f"reconnect_share is a share in [0, 1], got {self.reconnect_share}")

    def suspicion_floor(self, live: int) -> float:
        """Seconds a suspicion lasts at least: `suspicion_mult` periods × max(1, log10 N), the time the suspect
        needs to hear of it and refute (rumors cross N nodes in O(log N) rounds)."""
        return self.suspicion_mult * max(1.0, math.log10(max(live, 1))) * self.probe_interval

    def retransmit_limit(self, live: int) -> int:
        """Times each update is piggybacked: λ · ⌈log10(N + 1)⌉, enough to reach all N with high odds."""
        return self.retransmit_mult * math.ceil(math.log10(max(live, 1) + 1))

    def push_pull_period(self, live: int) -> float:
        """Seconds between anti-entropy rounds: `push_pull_interval`, one step longer per doubling of N above
        `push_pull_scale_above` (a full exchange costs O(N) bytes, so its rate falls as N grows)."""
        above = self.push_pull_scale_above
        steps = math.ceil(math.log2(live) - math.log2(above)) if live > above else 0
        return self.push_pull_interval * (steps + 1)

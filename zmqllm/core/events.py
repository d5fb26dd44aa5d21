"""Trace events for dashboards: who sent what to whom, task and peer changes. Pure.

A subscriber (a dashboard's DEALER) holds a lease it renews by subscribing
again; events for it wait in a bounded buffer between flushes, and what does
not fit is counted, not kept — so a slow or vanished dashboard costs a node a
fixed amount of memory and never slows the mesh. The node flushes every
`FLUSH_INTERVAL_S` (one EVENTS batch per subscriber) and publishes nothing at
all while nobody is subscribed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FLUSH_INTERVAL_S = 0.1
"""How often buffered events leave as one EVENTS batch (10 Hz: a dashboard's repaint rate)."""
BUFFER_LIMIT = 5_000
"""Events held per subscriber between flushes; past it they are counted as dropped."""
LEASE_S = 10.0
"""A subscription lapses unless renewed within this many seconds."""
MAX_SUBSCRIBERS = 64
"""Dashboards one node feeds at once: each holds a buffer, so their number is bounded too."""

Event = dict[str, Any]


@dataclass
class Subscriber:
    """One dashboard's pending events."""

    expires: float
    events: list[Event] = field(default_factory=list)
    dropped: int = 0


class EventHub:
    """Subscribers of one node and what is waiting for each."""

    def __init__(self, limit: int = BUFFER_LIMIT, lease_s: float = LEASE_S,
                 max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        self.limit = limit
        self.lease_s = lease_s
        self.max_subscribers = max_subscribers
        self._subscribers: dict[bytes, Subscriber] = {}

    @property
    def active(self) -> bool:
        """Whether anyone listens (callers skip building events otherwise)."""
        return bool(self._subscribers)

    def subscribe(self, identity: bytes, now: float) -> bool:
        """Start or renew a subscription; False when `max_subscribers` others hold one already."""
        subscriber = self._subscribers.get(identity)
        if subscriber is not None:
            subscriber.expires = now + self.lease_s
            return True
        self._subscribers = {i: s for i, s in self._subscribers.items() if s.expires > now}  # lapsed leases
        if len(self._subscribers) >= self.max_subscribers:
            return False
        self._subscribers[identity] = Subscriber(now + self.lease_s)
        return True

    def unsubscribe(self, identity: bytes) -> None:
        self._subscribers.pop(identity, None)

    def wanted(self) -> bool:
        """Whether an event offered now would be kept by some subscriber. When every buffer is full, the
        event is counted as dropped for each and the caller skips building it: under a flood a node pays
        a counter per event, not a dict and a clock read."""
        subscribers = self._subscribers.values()
        if any(len(subscriber.events) < self.limit for subscriber in subscribers):
            return True
        for subscriber in subscribers:
            subscriber.dropped += 1
        return False

    def publish(self, event: Event) -> None:
        """Offer one event to every subscriber: constant work per subscriber."""
        for subscriber in self._subscribers.values():
            if len(subscriber.events) < self.limit:
                subscriber.events.append(event)
            else:
                subscriber.dropped += 1

    def drain(self, now: float) -> list[tuple[bytes, list[Event], int]]:
        """Take what waits for each live subscriber: (identity, events, dropped).
        Lapsed subscriptions are forgotten; subscribers with nothing new are skipped."""
        batches = []
        for identity, subscriber in list(self._subscribers.items()):
            if subscriber.expires < now:
                del self._subscribers[identity]
                continue
            if subscriber.events or subscriber.dropped:
                batches.append((identity, subscriber.events, subscriber.dropped))
                subscriber.events, subscriber.dropped = [], 0
        return batches

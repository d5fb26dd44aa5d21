"""Trace events: the pure hub, and a real daemon publishing to a subscriber."""

from __future__ import annotations

import asyncio
import signal

from conftest import states, wait_until

from zmqllm.client import AsyncClient
from zmqllm.core.events import EventHub


def test_hub_buffers_per_subscriber_counts_drops_and_expires_leases():
    hub = EventHub(limit=3, lease_s=10)
    assert not hub.active
    hub.subscribe(b"x", now=0)
    hub.subscribe(b"y", now=0)
    for i in range(5):
        hub.publish({"k": "msg", "i": i})
    batches = {identity: (events, dropped) for identity, events, dropped in hub.drain(now=1)}
    assert batches[b"x"] == ([{"k": "msg", "i": 0}, {"k": "msg", "i": 1}, {"k": "msg", "i": 2}], 2)
    assert hub.drain(now=2) == []  # nothing new: no empty batches
    hub.subscribe(b"x", now=5)  # renewed; y is not
    hub.publish({"k": "peer"})
    assert [identity for identity, _, _ in hub.drain(now=12)] == [b"x"]
    assert hub.active
    hub.unsubscribe(b"x")
    assert not hub.active and not hub.wanted()


def test_a_full_hub_counts_events_nobody_can_keep_without_them_being_built():
    hub = EventHub(limit=2, lease_s=10)
    hub.subscribe(b"x", now=0)
    hub.subscribe(b"y", now=0)
    for i in range(2):
        assert hub.wanted()
        hub.publish({"i": i})
    assert [hub.wanted() for _ in range(3)] == [False] * 3  # both full: counted, not built
    assert {identity: (len(events), dropped) for identity, events, dropped in hub.drain(now=1)} == {
        b"x": (2, 3), b"y": (2, 3)}
    assert hub.wanted()  # drained: room again


def test_a_subscriber_sees_tasks_tokens_messages_and_peer_changes(spawn):
    a = spawn("a")
    b = spawn("b", "--peer", a.endpoint)
    wait_until(lambda: states(a).get("b") == "alive", 5, what="mesh")

    async def watch() -> list[dict]:
        seen: list[dict] = []
        async with AsyncClient(a.endpoint) as watcher, AsyncClient(a.endpoint) as client:
            subscription = watcher.subscribe()
            first = await subscription.__anext__()  # heartbeats flow at once
            seen += first["events"]
            async for _ in client.submit("alpha beta", peer="b", max_tokens=4):
                pass
            b.proc.send_signal(signal.SIGTERM)
            async for batch in subscription:
                seen += batch["events"]
                if any(e["k"] == "peer" and e["name"] == "b" and e["state"] == "left" for e in seen):
                    break
            await subscription.aclose()
        return seen

    seen = asyncio.run(asyncio.wait_for(watch(), 20))
    kinds = {(e["k"], e.get("type"), e.get("state")) for e in seen}
    assert ("msg", "HEARTBEAT", None) in kinds and ("msg", "ASSIGN", None) in kinds
    assert ("msg", "SUBMIT", None) in kinds  # received from the client
    assert {("task", None, s) for s in ("routing", "assigned", "streaming", "done")} <= kinds
    tokens = [e for e in seen if e["k"] == "token"]
    assert [t["text"] for t in tokens] == ["alpha ", "beta ", "alpha ", "beta "]
    assert all(isinstance(e["ts"], float) for e in seen)
    assign = next(e for e in seen if e.get("type") == "ASSIGN")
    assert (assign["src"], assign["dst"]) == ("a", "b") and assign["size"] > 0


def test_the_number_of_subscribers_is_bounded_and_lapsed_ones_make_room() -> None:
    """Each subscriber holds a buffer: a client opening connection after connection could grow a node's
    memory without bound (the old hub took every one)."""
    hub = EventHub(limit=10, lease_s=10, max_subscribers=3)
    assert all(hub.subscribe(f"d{n}".encode(), now=0) for n in range(3))
    assert not hub.subscribe(b"d3", now=1)
    assert hub.subscribe(b"d0", now=1)  # renewing is always allowed
    assert hub.subscribe(b"d3", now=10.5)  # d1 and d2 lapsed at 10

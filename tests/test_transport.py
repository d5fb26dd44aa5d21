"""The socket layer under faults: a failing handler, a failing receiver, a receiver that comes back.

Each test here failed on the code before the fix it guards (issue: races that lose or revive work).
"""

from __future__ import annotations

import asyncio

import zmq

from zmqllm.net.transport import Channel, Mailer, Sent

WAIT_S = 5.0


async def test_a_handler_that_raises_does_not_cost_the_socket_its_wake_up() -> None:
    """The old drain let the exception escape: messages already queued waited for an FD edge that never came."""
    ctx = zmq.Context()
    server, client = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client.connect(f"tcp://127.0.0.1:{port}")
    seen: list[bytes] = []
    both = asyncio.Event()

    def handle(frames: list[bytes]) -> None:
        seen.append(frames[0])
        if len(seen) == 2:
            both.set()
        if frames[0] == b"first":
            raise RuntimeError("a bug in one handler")

    channel = Channel(server, handle)
    try:
        client.send(b"first")
        client.send(b"second")
        await asyncio.wait_for(both.wait(), WAIT_S)
        assert seen == [b"first", b"second"]
    finally:
        channel.close()
        client.close(0)
        ctx.term()


async def test_one_receivers_failing_handler_does_not_drop_the_others_messages() -> None:
    """The old flush let the first receiver's `on_failure` exception end the flush: B never got its message."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"B")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")  # the ROUTER learns B's identity
    got: list[list[bytes]] = []
    known = asyncio.Event()
    channel = Channel(router, lambda frames: (got.append(frames), known.set()))

    def on_failure(identity: bytes, sent: Sent) -> None:
        raise RuntimeError(f"a bug handling {identity!r} {sent.value}")

    try:
        await asyncio.wait_for(known.wait(), WAIT_S)
        mailer = Mailer(channel, on_failure)
        mailer.post(b"gone-client", b"lost anyway")
        mailer.post(b"B", b"for B")
        mailer.flush()
        assert dealer.poll(int(WAIT_S * 1000)) and dealer.recv() == b"for B"
    finally:
        channel.close()
        dealer.close(0)
        ctx.term()


class _ScriptedChannel:
    """Stands in for a ROUTER channel: each send answers the next outcome of a script."""

    def __init__(self, outcomes: list[Sent]) -> None:
        self.outcomes = outcomes
        self.sent: list[list[bytes]] = []

    def send(self, frames: list[bytes]) -> Sent:
        outcome = self.outcomes.pop(0) if self.outcomes else Sent.OK
        if outcome is Sent.OK:
            self.sent.append(frames)
        return outcome


async def test_a_receiver_that_was_unreachable_is_sent_to_again_when_it_comes_back() -> None:
    """The old outbox latched `unreachable`: a peer reconnecting under its id was refused until restart."""
    # full once (an outbox is made, and its first try goes through), then gone, then back
    channel = _ScriptedChannel([Sent.FULL, Sent.OK, Sent.UNREACHABLE, Sent.OK])
    failures: list[tuple[bytes, Sent]] = []
    mailer = Mailer(channel, lambda identity, sent: failures.append((identity, sent)))  # type: ignore[arg-type]
    for payload in (b"one", b"two", b"three"):
        mailer.post(b"peer", payload)
        mailer.flush()
    assert failures == [(b"peer", Sent.UNREACHABLE)]
    assert [frames[1] for frames in channel.sent] == [b"one", b"three"]


async def test_a_long_drain_lets_other_callbacks_in() -> None:
    """Fails on the code before this change: one drain handled up to 256 frames, each of which may carry
    thousands of messages, so a node relaying a flood starved its own heartbeat loop for longer than the
    dead-detection time and its peers dropped its tasks."""
    import time

    ctx = zmq.Context()
    server, client = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client.connect(f"tcp://127.0.0.1:{port}")
    seen: list[bytes] = []
    everything = asyncio.Event()

    def handle(frames: list[bytes]) -> None:
        time.sleep(0.004)  # a heavy frame: thousands of tokens to relay
        seen.append(frames[0])
        if len(seen) == 50:
            everything.set()

    for i in range(50):
        client.send(str(i).encode())
    await asyncio.sleep(0.05)  # all 50 queued at the server before its first drain
    handled_when_heard: list[int] = []

    def other_callback() -> None:  # stands in for the heartbeat loop
        handled_when_heard.append(len(seen))

    channel = Channel(server, handle)
    try:
        asyncio.get_running_loop().call_soon(other_callback)
        await asyncio.wait_for(everything.wait(), WAIT_S)
        assert handled_when_heard and handled_when_heard[0] < 10, handled_when_heard
        assert seen == [str(i).encode() for i in range(50)]  # nothing lost or reordered by yielding
    finally:
        channel.close()
        client.close(0)
        ctx.term()

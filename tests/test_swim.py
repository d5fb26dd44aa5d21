"""SWIM with Lifeguard (`zmqllm.core.swim`), pure: a clock and a seeded random source in, messages and verdicts out.

Two kinds of tests: one node fed hand-made messages (a "quiet" config whose own probes never fire during the
test, so only what the test sends moves it), and small meshes on the simulator's network (`zmqllm.sim`), where
the test picks which messages are lost.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import msgpack
import pytest

from zmqllm.core.swim import UP, Change, Outgoing, Swim, SwimConfig
from zmqllm.core.swim_rumors import RumorQueue
from zmqllm.core.swim_wire import (MAX_ADDRESS, MAX_INCARNATION_STEP, MAX_META_BYTES, MAX_NODE_ID, MAX_PIGGYBACK,
                                   MAX_SYNC_STATES, Ack, Gossip, Malformed, Message, Nack, Ping, PingReq, Sync,
                                   Update, from_fields, to_fields)
from zmqllm.sim.membership import Mesh

QUIET = SwimConfig(probe_interval=100.0, probe_timeout=40.0, suspicion_mult=0.01, push_pull_interval=10_000.0)
"""A node that never probes or push-pulls within a test: suspicion floor 1 s × max(1, log10 N), ceiling 4×."""

PEERS = [f"peer-{i}" for i in range(9)]


def address(node: str) -> str:
    return f"tcp://{node}:5555"


def quiet_node(name: str = "me", peers: list[str] = PEERS, config: SwimConfig = QUIET) -> Swim:
    node = Swim(name, address(name), 0.0, random.Random(7), config)
    node.preload([(peer, address(peer)) for peer in peers], 0.0)
    return node


def alive(node: str, incarnation: int = 0, meta: bytes = b"", meta_version: int = 0) -> Update:
    return Update(node, "alive", incarnation, node, address(node), meta_version, meta)


def said(node: str, status: str, incarnation: int, by: str) -> Update:
    return Update(node, status, incarnation, by)  # type: ignore[arg-type]


def updates_in(out: list[Outgoing]) -> list[Update]:
    found: list[Update] = []
    for outgoing in out:
        message = outgoing.message
        found += message.states if isinstance(message, Sync) else getattr(message, "piggyback", ())
    return found


class Recorder:
    """A mesh watcher that keeps every liveness change: (time, observer, change)."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, str, Change]] = []

    def changed(self, observer: str, changes: list[Change], now: float) -> None:
        self.changes += [(now, observer, change) for change in changes]

    def truth_changed(self, node: str, up: bool) -> None:
        pass

    def node_added(self, node: str) -> None:
        pass

    def about(self, node: str, status: str) -> list[tuple[float, str, Change]]:
        return [entry for entry in self.changes if entry[2].node == node and entry[2].new == status]


def recorded_mesh(size: int, seed: int = 3, config: SwimConfig = SwimConfig(), loss: float = 0.0
                  ) -> tuple[Mesh, Recorder]:
    mesh = Mesh(size, loss, seed, config)
    recorder = Recorder()
    mesh.watch = recorder  # type: ignore[assignment]
    return mesh, recorder


def everyone_agrees(mesh: Mesh) -> bool:
    """Every running node sees exactly the running nodes as up."""
    running = mesh.running
    return all((mesh.nodes[observer].state_of(member) in UP) == (member in running)
               for observer in running for member in mesh.nodes if member != observer)


# -- the wire ---------------------------------------------------------------------------------------------------

SAMPLE_UPDATES = (alive("a", 3, b"\x00models", 2), said("b", "suspect", 1, "a"), said("c", "dead", 0, "a"),
                  said("d", "left", 4, "d"))
SAMPLES: list[Message] = [Ping(1, "b", SAMPLE_UPDATES), PingReq(2, "c", ()), Ack(3, SAMPLE_UPDATES[:1]), Nack(4),
                          Gossip(SAMPLE_UPDATES), Sync(2**64 - 1, SAMPLE_UPDATES, reply=True)]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_survives_msgpack_and_back(message: Message) -> None:
    kind, body = to_fields(message)
    decoded = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)
    assert from_fields(kind, decoded) == message


def _body(message: Message, **changes: object) -> tuple[str, dict]:
    kind, body = to_fields(message)
    return kind, {**body, **changes}


MALFORMED = {
    "unknown type": ("SWIM_HELLO", {"seq": 1}),
    "type not text": (["SWIM_PING"], {"seq": 1}),
    "body not a map": ("SWIM_ACK", [1]),
    "unknown field": _body(Ack(1), extra=1),
    "missing field": ("SWIM_PING", {"seq": 1}),
    "seq a bool": _body(Nack(1), seq=True),
    "seq negative": _body(Nack(1), seq=-1),
    "seq past uint32": _body(Nack(1), seq=2**32),
    "empty target": _body(Ping(1, "x"), target=""),
    "target too long": _body(Ping(1, "x"), target="n" * 65),
    "piggyback not a list": _body(Gossip(()), piggyback={"n": "a"}),
    "update not a map": _body(Gossip(()), piggyback=[["a", "alive", 0]]),
    "update lacks a key": _body(Gossip(()), piggyback=[{"n": "a", "s": "alive"}]),
    "update has an unknown key": _body(Gossip(()), piggyback=[{"n": "a", "s": "alive", "i": 0, "x": 1}]),
    "unknown status": _body(Gossip(()), piggyback=[{"n": "a", "s": "zombie", "i": 0}]),
    "incarnation a float": _body(Gossip(()), piggyback=[{"n": "a", "s": "alive", "i": 1.0}]),
    "meta as text": _body(Gossip(()), piggyback=[{"n": "a", "s": "alive", "i": 0, "m": "gemma"}]),
    "digest past 64 bits": _body(Sync(0), digest=2**64),
    "reply not a bool": _body(Sync(0), reply=1),
}


@pytest.mark.parametrize("kind, body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_are_refused(kind: object, body: object) -> None:
    with pytest.raises(Malformed):
        from_fields(kind, body)  # type: ignore[arg-type]


OVERSIZED = {
    "piggyback over its cap": (*_body(Gossip(()), piggyback=[{"n": f"n{i}", "s": "alive", "i": 0}
                                                             for i in range(MAX_PIGGYBACK + 1)]), MAX_PIGGYBACK),
    "push-pull over its cap": (*_body(Sync(0), states=[{"n": f"n{i}", "s": "alive", "i": 0}
                                                       for i in range(MAX_SYNC_STATES + 1)]), MAX_SYNC_STATES),
    "meta over its cap": (*_body(Gossip(()), piggyback=[{"n": "a", "s": "alive", "i": 0,
                                                         "m": b"x" * (MAX_META_BYTES + 1)}]), MAX_META_BYTES),
    "address over its cap": (*_body(Gossip(()), piggyback=[{"n": "a", "s": "alive", "i": 0, "a": "t" * 257}]),
                             MAX_ADDRESS),
    "node id over its cap": (*_body(Gossip(()), piggyback=[{"n": "a" * 65, "s": "alive", "i": 0}]), MAX_NODE_ID),
}


@pytest.mark.parametrize("kind, body, limit", OVERSIZED.values(), ids=OVERSIZED.keys())
def test_oversized_messages_are_refused_and_the_error_names_the_limit(kind: str, body: dict, limit: int) -> None:
    with pytest.raises(Malformed, match=str(limit)):
        from_fields(kind, body)


def test_just_under_the_caps_is_taken() -> None:
    kind, body = _body(Gossip(()), piggyback=[{"n": "a" * 64, "s": "alive", "i": 2**32 - 1, "a": "t" * 256,
                                               "m": b"x" * MAX_META_BYTES}] * MAX_PIGGYBACK)
    assert len(from_fields(kind, body).piggyback) == MAX_PIGGYBACK


def test_a_forged_incarnation_jump_refuses_the_whole_message() -> None:
    node = quiet_node()
    forged = said("peer-1", "dead", MAX_INCARNATION_STEP + 1, "peer-2")
    out = node.receive(1.0, "peer-2", Gossip((said("peer-3", "suspect", 0, "peer-2"), forged)))
    assert out == [] and node.refused == 1 and "implausible" in node.last_refusal
    assert node.state_of("peer-1") == "alive" and node.state_of("peer-3") == "alive"  # nothing applied
    # a step within bounds from what is known is news, not forgery
    node.receive(2.0, "peer-2", Gossip((said("peer-1", "dead", MAX_INCARNATION_STEP, "peer-2"),)))
    assert node.state_of("peer-1") == "dead" and node.refused == 1


def test_a_forged_claim_about_this_node_is_not_refuted_into_overflow() -> None:
    node = quiet_node()
    node.receive(1.0, "peer-2", Gossip((said("me", "dead", 2**32 - 1, "peer-2"),)))
    assert node.refused == 1 and node.incarnation == 0


def test_messages_under_this_nodes_own_id_or_helper_requests_from_strangers_are_refused() -> None:
    node = quiet_node()
    assert node.receive(1.0, "me", Ping(1, "me")) == [] and node.refused == 1
    assert node.receive(1.0, "stranger", PingReq(1, "peer-1")) == [] and node.refused == 2
    assert node.receive(1.0, "peer-2", PingReq(1, "peer-1")) != []  # a member may ask


# -- precedence and refutation ------------------------------------------------------------------------------------


def test_a_suspect_is_cleared_only_by_a_higher_incarnation() -> None:
    node = quiet_node()
    node.receive(0.0, "peer-2", Gossip((said("peer-1", "suspect", 0, "peer-2"),)))
    assert node.state_of("peer-1") == "suspect"
    node.receive(0.1, "peer-3", Gossip((alive("peer-1", 0),)))  # stale: same incarnation
    assert node.state_of("peer-1") == "suspect"
    node.receive(0.2, "peer-1", Gossip((alive("peer-1", 1),)))
    assert node.state_of("peer-1") == "alive"
    assert [(c.node, c.old, c.new, c.incarnation) for c in node.take_changes()] == [
        ("peer-1", "alive", "suspect", 0), ("peer-1", "suspect", "alive", 1)]
    node.tick(QUIET.suspicion_floor(10) * QUIET.suspicion_max_mult + 1)
    assert node.state_of("peer-1") == "alive"  # the refuted suspicion's timer does not fire


def test_dead_beats_suspect_and_comes_back_only_with_a_higher_incarnation() -> None:
    node = quiet_node()
    node.receive(0.0, "peer-2", Gossip((said("peer-1", "dead", 0, "peer-2"),)))
    node.receive(0.1, "peer-3", Gossip((said("peer-1", "suspect", 1, "peer-3"), alive("peer-1", 0))))
    assert node.state_of("peer-1") == "dead"
    node.receive(0.2, "peer-3", Gossip((alive("peer-1", 1),)))
    assert node.state_of("peer-1") == "alive"


def test_only_a_node_can_say_it_left() -> None:
    node = quiet_node()
    node.receive(0.0, "peer-2", Gossip((said("peer-1", "left", 0, "peer-2"),)))
    assert node.state_of("peer-1") == "dead"  # a third party's "left" is an accusation
    node.receive(0.1, "peer-2", Gossip((said("peer-3", "left", 1, "peer-3"),)))
    assert node.state_of("peer-3") == "left"
    node.receive(0.2, "peer-2", Gossip((said("peer-3", "dead", 1, "peer-2"),)))
    assert node.state_of("peer-3") == "left"


def test_a_suspected_node_refutes_with_a_new_incarnation_and_tells_its_accuser_first() -> None:
    node = quiet_node()
    out = node.receive(1.0, "peer-4", Ping(7, "me", (said("me", "suspect", 0, "peer-4"),)))
    assert node.incarnation == 1 and node.health == 1  # being doubted hints that this node is the slow one
    to_accuser = [o for o in out if o.to == "peer-4"]
    assert any(isinstance(o.message, Ack) and o.message.seq == 7 for o in to_accuser)
    assert alive("me", 1) in updates_in(to_accuser)
    # an old accusation (below the current incarnation) is not refuted again, but whoever still says it missed
    # the refutation, and hears the current incarnation
    out = node.receive(2.0, "peer-5", Gossip((said("me", "dead", 0, "peer-5"),)))
    assert node.incarnation == 1 and updates_in(out) == [alive("me", 1)] and out[0].to == "peer-5"
    # a rumor carries no reply of its own: the refutation goes straight back to whoever passed it on
    out = node.receive(3.0, "peer-6", Gossip((said("me", "dead", 1, "peer-5"),)))
    assert node.incarnation == 2 and alive("me", 2) in updates_in([o for o in out if o.to == "peer-6"])


# -- suspicion: expiry and Lifeguard's confirmations --------------------------------------------------------------


def _dead_at(confirmers: list[str], config: SwimConfig = QUIET) -> float:
    """When a quiet node declares peer-1 dead, accused by peer-2 at t=0 and confirmed by `confirmers` at 0.01."""
    node = quiet_node(config=config)
    node.receive(0.0, "peer-2", Gossip((said("peer-1", "suspect", 0, "peer-2"),)))
    for confirmer in confirmers:
        node.receive(0.01, confirmer, Gossip((said("peer-1", "suspect", 0, confirmer),)))
    now = 0.0
    while node.state_of("peer-1") == "suspect":
        now = node.next_wakeup()
        assert now < 100, "the suspicion never expired"
        node.tick(now)
    assert node.state_of("peer-1") == "dead"
    return now


def test_a_lone_suspicion_expires_to_dead_after_its_longest_timeout() -> None:
    floor = QUIET.suspicion_floor(len(PEERS) + 1)
    assert _dead_at([]) == pytest.approx(floor * QUIET.suspicion_max_mult)


def test_independent_confirmations_shorten_the_suspicion_to_its_floor() -> None:
    floor = QUIET.suspicion_floor(len(PEERS) + 1)
    lone, one, three = _dead_at([]), _dead_at(["peer-3"]), _dead_at(["peer-3", "peer-4", "peer-5"])
    assert floor < one < lone
    assert three == pytest.approx(floor)
    assert _dead_at(["peer-3", "peer-3", "peer-2"]) == one  # the same accuser twice is one confirmation


def test_the_verdict_is_sent_to_the_dead_node_and_spread_as_first_hand() -> None:
    node = quiet_node()
    node.receive(0.0, "peer-2", Gossip((said("peer-1", "suspect", 0, "peer-2"),)))
    out = node.tick(QUIET.suspicion_floor(10) * QUIET.suspicion_max_mult)
    verdict = said("peer-1", "dead", 0, "me")
    assert any(o.to == "peer-1" and o.message == Gossip((verdict,)) for o in out)
    assert [c for c in node.take_changes() if c.new == "dead"] == [Change("peer-1", "suspect", "dead", 0, True)]


# -- probes ------------------------------------------------------------------------------------------------------


def _probing_node(config: SwimConfig = SwimConfig()) -> tuple[Swim, Outgoing]:
    """A node of 10 (default timings) that has just sent its first probe."""
    node = Swim("me", address("me"), 0.0, random.Random(11), config)
    node.preload([(peer, address(peer)) for peer in PEERS], 0.0)
    pings: list[Outgoing] = []
    while not pings:
        pings = [o for o in node.tick(node.next_wakeup()) if isinstance(o.message, Ping)]
    assert len(pings) == 1
    return node, pings[0]


def test_a_missed_ack_asks_helpers_and_pings_again_before_suspecting() -> None:
    node, ping = _probing_node()
    started = node.next_wakeup() - node.config.probe_timeout
    out = node.tick(node.next_wakeup())
    requests = [o for o in out if isinstance(o.message, PingReq)]
    assert len(requests) == node.config.indirect_checks and ping.to not in {o.to for o in requests}
    assert any(isinstance(o.message, Ping) and o.to == ping.to for o in out)  # and once more directly
    assert node.state_of(ping.to) == "alive"
    # a helper relays the target's ack: no suspicion
    node.receive(started + 0.3, requests[0].to, Ack(ping.message.seq))
    node.tick(started + node.config.probe_interval)
    assert node.state_of(ping.to) == "alive"


def test_no_ack_at_all_makes_a_suspect_and_silent_helpers_lower_local_health() -> None:
    node, ping = _probing_node()
    node.tick(node.next_wakeup())  # helpers asked
    node.tick(node.next_wakeup())  # the period ends: nobody answered, not even with a nack
    assert node.state_of(ping.to) == "suspect"
    assert node.health == node.config.indirect_checks  # each helper's missing nack counts against us


def test_helpers_that_nack_keep_local_health_as_it_was() -> None:
    node, ping = _probing_node()
    requests = [o for o in node.tick(node.next_wakeup()) if isinstance(o.message, PingReq)]
    for request in requests:
        node.receive(node.next_wakeup() - 0.01, request.to, Nack(ping.message.seq))
    node.tick(node.next_wakeup())
    assert node.state_of(ping.to) == "suspect" and node.health == 0


def test_an_ack_from_a_node_not_asked_does_not_count() -> None:
    node, ping = _probing_node()
    stranger = next(peer for peer in PEERS if peer != ping.to)
    node.receive(0.01, stranger, Ack(ping.message.seq))  # not the target, and no helper yet
    node.tick(node.next_wakeup())
    node.tick(node.next_wakeup())
    assert node.state_of(ping.to) == "suspect"


def test_a_helper_relays_the_targets_ack_or_nacks_in_time() -> None:
    node = quiet_node()
    out = node.receive(1.0, "peer-2", PingReq(41, "peer-1"))
    (ping,) = out
    assert ping.to == "peer-1" and isinstance(ping.message, Ping)
    relayed = node.receive(1.05, "peer-1", Ack(ping.message.seq))
    assert [(o.to, o.message.seq) for o in relayed if isinstance(o.message, Ack)] == [("peer-2", 41)]
    (ping,) = node.receive(2.0, "peer-2", PingReq(42, "peer-1"))
    assert node.receive(2.05, "peer-3", Ack(ping.message.seq)) == []  # only the target's ack is relayed
    early = node.tick(2.0 + QUIET.probe_timeout - 0.01)
    out = node.tick(2.0 + QUIET.probe_timeout)
    assert [o for o in early if isinstance(o.message, Nack)] == []
    assert [(o.to, o.message) for o in out if isinstance(o.message, Nack)] == [("peer-2", Nack(42))]


def test_a_node_that_wakes_up_late_blames_itself_not_the_member_it_was_probing() -> None:
    node, ping = _probing_node()
    late = node.next_wakeup() + 5.0  # the loop was stalled (a SIGSTOP, a starved CPU) past the whole period
    node.tick(late)
    assert node.state_of(ping.to) == "alive" and node.health == 1
    on_time, ping = _probing_node()
    on_time.tick(on_time.next_wakeup())
    on_time.tick(on_time.next_wakeup())
    assert on_time.state_of(ping.to) == "suspect"  # the same silence, judged on time


@pytest.mark.parametrize("health", [0, 3])
def test_local_health_stretches_the_probe_timeout_and_period(health: int) -> None:
    config = SwimConfig()
    node = Swim("me", address("me"), 0.0, random.Random(11), config)
    node.preload([(peer, address(peer)) for peer in PEERS], 0.0)
    node.health = health
    started, probes = 0.0, []
    while not probes:
        started = node.next_wakeup()
        probes = [o for o in node.tick(started) if isinstance(o.message, Ping)]
    assert node.next_wakeup() == pytest.approx(started + (health + 1) * config.probe_timeout)
    for probe in probes:  # answered at once: the next probe waits one stretched period
        node.receive(started + 0.001, probe.to, Ack(probe.message.seq))
    assert node.next_wakeup() == pytest.approx(started + (health + 1) * config.probe_interval)


def test_a_ping_to_a_suspect_tells_it_first_that_it_is_suspected() -> None:
    node, ping = _probing_node()
    assert not any(u.node == ping.to for u in ping.message.piggyback)
    node.receive(0.0, "peer-7", Gossip((said(ping.to, "suspect", 0, "peer-7"),)))
    again = None
    while again is None:  # the second, direct ping of the same probe (after a gossip round, maybe)
        now = node.next_wakeup()
        assert now < node.config.probe_interval
        again = next((o for o in node.tick(now) if isinstance(o.message, Ping) and o.to == ping.to), None)
    first = again.message.piggyback[0]
    assert (first.node, first.status, first.incarnation, first.source) == (ping.to, "suspect", 0, "me")


# -- dissemination --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("members", [10, 100, 1000])
def test_each_update_is_piggybacked_a_bounded_number_of_times_growing_with_log_n(members: int) -> None:
    peers = [f"peer-{i}" for i in range(members - 1)]
    node = quiet_node(peers=peers)
    node.set_meta(b"models: gemma")
    sent, now = 0, 0.0
    for _ in range(200):
        now += QUIET.gossip_interval
        sent += sum(1 for update in updates_in(node.tick(now)) if update.node == "me")
    assert sent == QUIET.retransmit_mult * math.ceil(math.log10(members + 1))


def test_the_newest_news_rides_first_when_a_message_is_full() -> None:
    queue = RumorQueue()
    for i in range(40):
        queue.add(alive(f"n{i}"))
    assert [u.node for u in queue.take(3, limit=5)] == ["n39", "n38", "n37"]
    queue.add(alive("n5", 1))  # a newer update about a node replaces the older one, and goes first
    taken = queue.take(40, limit=5)
    assert taken[0] == alive("n5", 1) and len({u.node for u in taken}) == len(taken) == 40


def test_the_table_is_bounded() -> None:
    node = quiet_node(config=replace(QUIET, max_members=12))
    node.receive(1.0, "peer-1", Gossip(tuple(alive(f"new-{i}") for i in range(10))))
    assert len(node.members()) == 1 + 12 and node.refused == 7


# -- whole meshes on the simulated network ------------------------------------------------------------------------


def test_an_indirect_probe_saves_a_node_behind_one_lossy_link() -> None:
    def suspicions(config: SwimConfig) -> int:
        mesh, recorder = recorded_mesh(10, seed=5, config=config)
        a, x = sorted(mesh.nodes)[:2]
        mesh.drops = lambda sender, to, message: {sender, to} == {a, x}  # the a–x link loses everything
        mesh.run_until(60.0)
        assert mesh.nodes[a].state_of(x) in UP
        return len([entry for entry in recorder.about(x, "suspect") if entry[1] == a])

    assert suspicions(SwimConfig()) == 0
    assert suspicions(SwimConfig(indirect_checks=0)) > 0  # without helpers the same link makes suspects


def test_a_crash_is_detected_by_every_live_node() -> None:
    mesh, recorder = recorded_mesh(20)
    mesh.run_until(5.0)
    victim = sorted(mesh.nodes)[3]
    mesh.crash(victim)
    mesh.run_until(20.0)
    judged = {observer for _, observer, _ in recorder.about(victim, "dead")}
    assert judged == mesh.running
    assert max(at for at, _, _ in recorder.about(victim, "dead")) - 5.0 < 10.0


def test_a_node_that_leaves_is_left_everywhere_and_not_dead() -> None:
    mesh, recorder = recorded_mesh(12)
    mesh.run_until(5.0)
    leaver = sorted(mesh.nodes)[0]
    mesh.leave(leaver)
    mesh.run_until(7.0)
    mesh.crash(leaver)  # the process exits after its goodbye
    mesh.run_until(30.0)
    assert {observer for _, observer, _ in recorder.about(leaver, "left")} == mesh.running
    assert recorder.about(leaver, "dead") == [] and recorder.about(leaver, "suspect") == []


def test_a_join_through_one_seed_reaches_everyone() -> None:
    mesh, _ = recorded_mesh(15)
    mesh.run_until(3.0)
    newcomer = mesh.add_node(sorted(mesh.nodes)[0])
    mesh.run_until(6.0)
    assert everyone_agrees(mesh) and mesh.nodes[newcomer].state_of(sorted(mesh.nodes)[5]) == "alive"


def test_push_pull_heals_a_partition() -> None:
    def after_heal(config: SwimConfig) -> tuple[bool, bool]:
        mesh, _ = recorded_mesh(12, seed=9, config=config)
        mesh.run_until(3.0)
        side = set(sorted(mesh.nodes)[:4])
        mesh.partition(side)
        mesh.run_until(40.0)
        split = all(mesh.nodes[a].state_of(b) == "dead" for a in side for b in mesh.nodes if b not in side)
        mesh.heal()
        mesh.run_until(50.0)  # 10 s
        return split, everyone_agrees(mesh)

    assert after_heal(SwimConfig()) == (True, True)
    # the fast reconnect to lately dead members alone heals it within seconds
    assert after_heal(SwimConfig(push_pull_interval=1e6)) == (True, True)
    # without either, nobody ever talks to a member it holds dead: the halves stay apart
    assert after_heal(SwimConfig(push_pull_interval=1e6, reconnect_interval=1e6)) == (True, False)


@pytest.mark.timeout(60)
def test_after_a_long_partition_the_side_that_was_cut_off_defers_instead_of_making_the_rest_refute() -> None:
    mesh, recorder = recorded_mesh(30, seed=1)
    mesh.run_until(5.0)
    side = set(random.Random(1).sample(sorted(mesh.nodes), 3))
    mesh.partition(side)
    mesh.run_until(185.0)  # long enough for the three to bury all 27 others
    assert all(mesh.nodes[a].state_of(b) == "dead" for a in side for b in mesh.nodes if b not in side)
    incarnations = {node: swim.incarnation for node, swim in mesh.nodes.items()}
    mesh.heal()
    mesh.run_until(200.0)
    assert everyone_agrees(mesh)
    refuted = {node for node, swim in mesh.nodes.items() if swim.incarnation > incarnations[node]}
    assert refuted == side  # only the three, whom the rest held dead, had to refute


def test_partial_views_are_bounded_and_symmetric_above_the_threshold() -> None:
    config = SwimConfig()
    mesh, _ = recorded_mesh(150, config=config)
    views = {node: set(swim.active_view()) for node, swim in mesh.nodes.items()}
    assert max(map(len, views.values())) <= 2 * config.view_rings
    assert all(a in views[b] for a, view in views.items() for b in view)
    reached, frontier = set(), [next(iter(views))]
    while frontier:  # the overlay connects everyone
        node = frontier.pop()
        if node not in reached:
            reached.add(node)
            frontier += views[node] - reached
    assert reached == set(views)
    mesh.run_until(3.0)
    victim = sorted(mesh.nodes)[0]
    mesh.crash(victim)
    mesh.run_until(20.0)
    views = {node: set(mesh.nodes[node].active_view()) for node in mesh.running}
    assert all(victim not in view and len(view) <= 2 * config.view_rings for view in views.values())
    assert all(a in views[b] for a, view in views.items() for b in view)


def test_below_the_threshold_everyone_links_to_everyone() -> None:
    mesh, _ = recorded_mesh(32)
    assert all(set(swim.active_view()) == set(mesh.nodes) - {node} for node, swim in mesh.nodes.items())


def test_digests_agree_exactly_when_tables_do() -> None:
    mesh, _ = recorded_mesh(8)
    a, b, c, x = (mesh.nodes[node] for node in sorted(mesh.nodes)[:4])
    assert a.digest == b.digest == c.digest
    death = Gossip((said(x.node, "dead", 0, c.node),))
    a.receive(0.0, c.node, death)
    assert a.digest != b.digest
    b.receive(0.0, c.node, death)
    assert a.digest == b.digest


def test_a_push_pull_with_many_news_spreads_refutations_but_not_the_members_it_just_learned() -> None:
    node = quiet_node()
    newcomers = tuple(alive(f"new-{i}") for i in range(QUIET.resync_changes))
    node.receive(1.0, "peer-1", Sync(0, (alive("peer-1"), alive("peer-2", 1), *newcomers)))
    assert node.state_of("new-0") == "alive"
    spread = {update.node for update in updates_in(node.tick(1.0 + QUIET.gossip_interval))}
    assert spread == {"peer-2"}  # the mesh knows the newcomers; peer-2's new incarnation is news to it


def test_a_hint_brings_a_probe_forward_but_the_verdict_stays_the_protocols() -> None:
    node = quiet_node()
    assert node.next_wakeup() > 0.5 and not [o for o in node.tick(0.5) if isinstance(o.message, Ping)]
    node.probe_soon("peer-4", 0.5)  # its connection closed, say
    pings = [out for out in node.tick(0.5) if isinstance(out.message, Ping)]
    assert [out.to for out in pings] == ["peer-4"]
    node.receive(0.6, "peer-4", Ack(pings[0].message.seq))
    node.tick(0.7)
    assert node.state_of("peer-4") == "alive"  # it answered: nothing changes
    for stranger in ("stranger", node.node):
        node.probe_soon(stranger, 0.8)
    assert not [o for o in node.tick(0.8) if isinstance(o.message, Ping)]


def test_a_node_that_left_stops_asking_to_be_ticked() -> None:
    node = quiet_node()
    node.receive(1.0, "peer-1", PingReq(5, "peer-2"))  # a relay it serves, its nack due at 41 s
    node.leave(1.0)
    now, ticks = 1.0, 0
    while node.next_wakeup() != math.inf and ticks < 200:  # its goodbye is gossiped, then nothing is due
        now = max(now, node.next_wakeup())
        node.tick(now)
        ticks += 1
    assert node.next_wakeup() == math.inf, f"still due at {node.next_wakeup()} after {ticks} ticks"

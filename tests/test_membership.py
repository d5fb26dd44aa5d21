"""The peer table, fed identities and a clock made of plain floats (no sockets, no sleeping)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from zmqllm.core import protocol
from zmqllm.core.membership import Identity, Liveness, Load, NameTaken, PeerTable, new_endpoints

LIVENESS = Liveness(interval=0.5, suspect_after=2.0, dead_after=4.0)
SUSPECT_S, DEAD_S = 1.0, 2.0  # seconds of silence; exact in binary floating point
T0 = 100.0
ROW_KEYS = {"name", "node_id", "endpoint", "models", "state", "slots", "queued", "tok_s", "heartbeat_age_s", "self",
            "ctx", "chat", "loaded", "loading", "cache_hit"}  # the contract's keys, plus what `zmqllm models` shows

ME = Identity("n-me", "me", "tcp://127.0.0.1:5000", ("gemma",), 2)


def ident(name: str, node_id: str | None = None, port: int | None = None, models: tuple[str, ...] = ("gemma",),
          slots: int = 1) -> Identity:
    port = port if port is not None else 5000 + sum(map(ord, name))
    return Identity(node_id or f"id-{name}", name, f"tcp://127.0.0.1:{port}", models, slots)


def table(now: float = T0) -> PeerTable:
    return PeerTable(ME, LIVENESS, now)


def state(t: PeerTable, node_id: str) -> str:
    peer = t.get(node_id)
    assert peer is not None
    return peer.state


# -- liveness ---------------------------------------------------------------------------


def test_thresholds_in_seconds() -> None:
    assert (LIVENESS.suspect_s, LIVENESS.dead_s) == (SUSPECT_S, DEAD_S)


def test_silence_moves_alive_to_suspect_to_dead_strictly_after_each_threshold() -> None:
    t = table()
    assert t.observe(ident("a"), T0) == "joined"
    assert t.tick(T0 + SUSPECT_S) == [] and state(t, "id-a") == "alive"  # exactly at the threshold: still alive
    changes = t.tick(T0 + SUSPECT_S + 1e-9)
    assert [(c.peer.node_id, c.old, c.new) for c in changes] == [("id-a", "alive", "suspect")]
    assert t.tick(T0 + DEAD_S) == [] and state(t, "id-a") == "suspect"
    changes = t.tick(T0 + DEAD_S + 1e-9)
    assert [(c.old, c.new) for c in changes] == [("suspect", "dead")]
    assert t.tick(T0 + 1000) == [] and state(t, "id-a") == "dead"  # dead stays dead, reported once


def test_long_silence_goes_straight_to_dead() -> None:
    t = table()
    t.observe(ident("a"), T0)
    changes = t.tick(T0 + DEAD_S + 0.5)
    assert [(c.old, c.new) for c in changes] == [("alive", "dead")]


def test_each_peer_has_its_own_clock() -> None:
    t = table()
    t.observe(ident("a"), T0)
    t.observe(ident("b"), T0 + 0.5)
    changes = t.tick(T0 + SUSPECT_S + 0.25)
    assert [(c.peer.name, c.new) for c in changes] == [("a", "suspect")]
    assert state(t, "id-b") == "alive"


def test_heard_from_revives_a_suspect_and_restarts_its_clock() -> None:
    t = table()
    t.observe(ident("a"), T0)
    t.tick(T0 + 1.5)
    assert state(t, "id-a") == "suspect"
    assert t.heard_from("id-a", T0 + 1.5) is True
    assert state(t, "id-a") == "alive"
    assert t.tick(T0 + 1.5 + SUSPECT_S) == []
    assert [c.new for c in t.tick(T0 + 1.5 + SUSPECT_S + 0.01)] == ["suspect"]


def test_heard_from_an_unknown_node_is_false() -> None:
    t = table()
    assert t.heard_from("stranger", T0) is False
    assert t.peers() == []


def test_dead_peer_needs_its_identity_to_come_back() -> None:
    """A bare message does not revive the dead; a HELLO/HEARTBEAT (observe) rejoins it."""
    t = table()
    t.observe(ident("a"), T0)
    t.tick(T0 + 10)
    assert t.heard_from("id-a", T0 + 11) is True
    assert state(t, "id-a") == "dead"
    assert t.observe(ident("a"), T0 + 11, Load(active=1)) == "rejoined"
    assert state(t, "id-a") == "alive"
    assert t.tick(T0 + 11 + SUSPECT_S) == []


def test_observe_refreshes_a_live_peer() -> None:
    t = table()
    t.observe(ident("a"), T0, Load(active=1, queued=2, slots=1, tok_s=50.0))
    assert t.observe(ident("a", models=("gemma", "qwen")), T0 + 0.9) == "updated"
    peer = t.get("id-a")
    assert peer is not None
    assert peer.identity.models == ("gemma", "qwen")
    assert peer.load == Load(active=1, queued=2, slots=1, tok_s=50.0)  # no load given: the last one stays
    assert t.tick(T0 + 0.9 + SUSPECT_S) == []


# -- leaving, restarting, names ------------------------------------------------------------


def test_bye_marks_left_at_once_and_only_once() -> None:
    t = table()
    t.observe(ident("a"), T0)
    change = t.mark_left("id-a", T0)
    assert change is not None and (change.peer.node_id, change.old, change.new) == ("id-a", "alive", "left")
    assert t.mark_left("id-a", T0) is None
    assert t.mark_left("stranger", T0) is None
    assert t.tick(T0 + 100) == [] and state(t, "id-a") == "left"
    assert t.observe(ident("a"), T0 + 100) == "rejoined"


def test_bye_from_a_dead_peer_records_the_old_state() -> None:
    t = table()
    t.observe(ident("a"), T0)
    t.tick(T0 + 10)
    change = t.mark_left("id-a", T0)
    assert change is not None and (change.old, change.new) == ("dead", "left")


@pytest.mark.parametrize("holder_state", ["alive", "suspect", "dead", "left"])
def test_restart_under_same_name_and_endpoint_replaces_the_row(holder_state: str) -> None:
    t = table()
    old = ident("a", "old-id", port=6001)
    t.observe(old, T0)
    if holder_state == "suspect":
        t.tick(T0 + 1.5)
    elif holder_state == "dead":
        t.tick(T0 + 10)
    elif holder_state == "left":
        t.mark_left("old-id", T0)
    assert state(t, "old-id") == holder_state
    assert t.observe(ident("a", "new-id", port=6001), T0 + 20) == "replaced"
    assert [(p.name, p.node_id, p.state) for p in t.peers()] == [("a", "new-id", "alive")]
    assert t.get("old-id") is None


@pytest.mark.parametrize("holder_state", ["alive", "suspect"])
def test_live_name_claimed_from_another_endpoint_is_taken(holder_state: str) -> None:
    t = table()
    t.observe(ident("a", "id-1", port=6001), T0)
    if holder_state == "suspect":
        t.tick(T0 + 1.5)
    with pytest.raises(NameTaken, match="6001"):
        t.observe(ident("a", "id-2", port=6002), T0 + 1.6)
    assert [(p.node_id, p.state) for p in t.peers()] == [("id-1", holder_state)]


@pytest.mark.parametrize("holder_state", ["dead", "left"])
def test_name_of_a_gone_node_can_be_taken_over_from_elsewhere(holder_state: str) -> None:
    t = table()
    t.observe(ident("a", "id-1", port=6001), T0)
    if holder_state == "dead":
        t.tick(T0 + 10)
    else:
        t.mark_left("id-1", T0)
    assert t.observe(ident("a", "id-2", port=6002), T0 + 10) == "replaced"
    assert [(p.node_id, p.identity.endpoint) for p in t.peers()] == [("id-2", "tcp://127.0.0.1:6002")]


@pytest.mark.parametrize("endpoint", [ME.endpoint, "tcp://127.0.0.1:7777"])
def test_this_nodes_own_name_is_taken(endpoint: str) -> None:
    t = table()
    with pytest.raises(NameTaken):
        t.observe(Identity("imposter", ME.name, endpoint, ("gemma",), 1), T0)
    assert t.peers() == []


def test_hearing_itself_adds_no_row() -> None:
    """A node that dials its own ROUTER under another spelling of its address (a seed
    `tcp://localhost:P` for `tcp://127.0.0.1:P`) hears its own HELLO: that must neither
    raise (KeyError today) nor list the node twice."""
    t = table()
    t.observe(ME, T0)
    assert all(p.node_id != ME.node_id for p in t.peers())
    assert [r["node_id"] for r in t.rows(T0, Load())].count(ME.node_id) == 1


def test_by_name_finds_self_and_peers() -> None:
    t = table()
    t.observe(ident("a"), T0)
    me = t.by_name("me")
    peer = t.by_name("a")
    assert me is not None and me.node_id == ME.node_id
    assert peer is not None and peer.node_id == "id-a"
    assert t.by_name("zed") is None


def test_peers_sorted_by_name_and_live_peers_exclude_gone() -> None:
    t = table()
    for name in ("c", "a", "d", "b"):
        t.observe(ident(name), T0)
    t.mark_left("id-c", T0)
    t.heard_from("id-a", T0 + 1.5)
    t.heard_from("id-b", T0 + 2.1)
    t.tick(T0 + 2.2)  # a: 0.7 s → alive; b: 0.1 s → alive; d: 2.2 s → dead
    assert [p.name for p in t.peers()] == ["a", "b", "c", "d"]
    assert [p.name for p in t.live_peers()] == ["a", "b"]


# -- digest and gossip -------------------------------------------------------------------------


def test_digest_is_equal_iff_the_live_membership_is() -> None:
    a_me, b_me = ident("a"), ident("b")
    a, b = PeerTable(a_me, LIVENESS, T0), PeerTable(b_me, LIVENESS, T0)
    assert a.digest() != b.digest()  # each knows only itself
    a.observe(b_me, T0)
    b.observe(a_me, T0)
    assert a.digest() == b.digest()  # both agree: {a, b}
    a.observe(ident("c"), T0)
    assert a.digest() != b.digest()
    b.observe(ident("c"), T0 + 0.5)
    assert a.digest() == b.digest()
    a.tick(T0 + 1.5)  # c suspect at a: still live, no gossip needed
    assert state(a, "id-c") == "suspect" and a.digest() == b.digest()
    a.tick(T0 + 10)  # every peer of a is dead now
    assert a.digest() == PeerTable(a_me, LIVENESS, T0).digest()
    assert a.digest() != b.digest()


def test_digest_ignores_order_of_arrival_and_left_peers() -> None:
    x, y = table(), table()
    for name in ("a", "b", "c"):
        x.observe(ident(name), T0)
    for name in ("c", "a", "b", "z"):
        y.observe(ident(name), T0)
    assert x.digest() != y.digest()
    y.mark_left("id-z", T0)
    assert x.digest() == y.digest()


def test_gossip_rows_are_this_node_and_live_peers() -> None:
    t = table()
    for name in ("a", "b", "c", "d"):
        t.observe(ident(name), T0)
    t.tick(T0 + 1.5)  # all suspect
    t.heard_from("id-a", T0 + 1.5)
    t.tick(T0 + 2.5)  # a alive (silent exactly 1.0 s), b, c, d dead
    t.observe(ident("b"), T0 + 2.5)
    t.mark_left("id-b", T0)
    rows = t.gossip_rows()
    assert rows == [
        {"name": "me", "node_id": ME.node_id, "endpoint": ME.endpoint},
        {"name": "a", "node_id": "id-a", "endpoint": ident("a").endpoint},
    ]
    assert protocol.decode(protocol.encode(protocol.make("PEERS", peers=rows)))["peers"] == rows


def test_new_endpoints() -> None:
    rows: list[dict[str, Any]] = [
        {"endpoint": "tcp://h:1"},
        {"endpoint": "tcp://h:2"},
        {"endpoint": "tcp://h:1"},
        {"endpoint": 5},
        {"name": "no endpoint"},
        {"endpoint": "tcp://known:9"},
    ]
    assert new_endpoints(rows, {"tcp://known:9"}) == ["tcp://h:1", "tcp://h:2"]
    assert new_endpoints([], set()) == []


def test_known_endpoints_include_self_and_every_peer() -> None:
    t = table()
    t.observe(ident("a"), T0)
    t.tick(T0 + 10)
    assert t.known_endpoints() == {ME.endpoint, ident("a").endpoint}


# -- the listing users see ---------------------------------------------------------------------------


def test_rows_follow_the_contract() -> None:
    t = table()
    t.observe(ident("b", models=("gemma", "qwen"), slots=4), T0, Load(active=3, queued=5, slots=4, tok_s=12.346))
    t.observe(ident("a"), T0)
    t.tick(T0 + 10)
    t.observe(ident("b", models=("gemma", "qwen"), slots=4), T0 + 9.75)
    rows = t.rows(T0 + 10, Load(active=1, queued=0, slots=2, tok_s=88.888))
    assert all(set(row) == ROW_KEYS for row in rows)
    me, a, b = rows
    assert me == {
        "name": "me", "node_id": ME.node_id, "endpoint": ME.endpoint, "models": ["gemma"], "state": "alive",
        "slots": {"busy": 1, "total": 2}, "queued": 0, "tok_s": 88.89, "heartbeat_age_s": 0.0, "self": True,
        "ctx": 0, "chat": False, "loaded": ["gemma"], "loading": [], "cache_hit": None,
    }
    assert (a["name"], a["state"], a["self"], a["heartbeat_age_s"]) == ("a", "dead", False, 10.0)
    assert b == {
        "name": "b", "node_id": "id-b", "endpoint": ident("b").endpoint, "models": ["gemma", "qwen"],
        "state": "alive", "slots": {"busy": 3, "total": 4}, "queued": 5, "tok_s": 12.35, "heartbeat_age_s": 0.25,
        "self": False, "ctx": 0, "chat": False, "loaded": ["gemma", "qwen"], "loading": [], "cache_hit": None,
    }
    assert protocol.decode(protocol.encode(protocol.make("PEERS", peers=rows)))["peers"] == rows


def test_a_node_of_several_models_says_which_are_loaded() -> None:
    """A model host advertises every model it can serve, and apart those loaded now and loading: the scheduler
    prefers a node with the model loaded, `zmqllm models` shows both."""
    host = Identity("id-h", "h", "tcp://127.0.0.1:5009", ("a", "b", "c"), 1, loaded=("b",), loading=("c",))
    back = Identity.from_fields(protocol.decode(protocol.encode(protocol.make(
        "HEARTBEAT", **host.as_fields(), load=Load().as_fields(), digest="x"))).fields)
    assert back == host and back.loaded_models == ("b",)
    t = table()
    t.observe(back, T0)
    row = next(r for r in t.rows(T0, Load()) if r["name"] == "h")
    assert (row["models"], row["loaded"], row["loading"]) == (["a", "b", "c"], ["b"], ["c"])
    t.refresh_me(replace(ME, loaded=()))
    assert next(r for r in t.rows(T0, Load()) if r["self"])["loaded"] == []


def test_heartbeat_fields_are_a_valid_message() -> None:
    load = Load(active=1, queued=2, slots=2, tok_s=3.14159)
    beat = protocol.make("HEARTBEAT", **ME.as_fields(), load=load.as_fields(), digest=table().digest())
    back = protocol.decode(protocol.encode(beat))
    assert Identity.from_fields(back.fields) == ME
    assert Load.from_fields(back["load"]) == Load(1, 2, 2, 3.14)


# -- load as peers report it ----------------------------------------------------------------------------


def test_load_from_fields_takes_numbers_and_ignores_the_rest() -> None:
    assert Load.from_fields({"active": 2, "queued": 3.9, "slots": 4, "tok_s": 7}) == Load(2, 3, 4, 7.0)
    assert Load.from_fields({"active": True, "queued": "5", "slots": None}) == Load()
    assert Load.from_fields({}) == Load()


@pytest.mark.parametrize(("key", "value"), [("queued", math.inf), ("active", math.nan), ("tok_s", math.nan)])
def test_load_from_fields_survives_non_finite_numbers(key: str, value: float) -> None:
    """msgpack carries inf and NaN; a peer's (or any client's) HEARTBEAT with them must not
    break the handler (today: OverflowError / ValueError for the int keys, NaN kept in tok_s,
    which then reaches the peer rows and `peers --json`)."""
    load = Load.from_fields({key: value})
    assert all(math.isfinite(getattr(load, k)) for k in ("active", "queued", "slots", "tok_s"))


def test_departed_rows_are_forgotten_after_forget_after_intervals() -> None:
    """Peers that come and go for ever must not grow the table (the old code never dropped a row)."""
    t = table()
    forget_s = LIVENESS.forget_s
    for n in range(200):  # 200 short-lived nodes, each saying BYE
        t.observe(ident(f"n{n}", port=6000 + n), T0 + n)
        t.mark_left(f"id-n{n}", T0 + n)
    assert len(t.peers()) == 200
    assert t.forget_departed(T0 + forget_s - 0.5) == []
    assert len(t.forget_departed(T0 + 199 + forget_s)) == 200 and t.peers() == []
    t.observe(ident("late"), T0)
    t.tick(T0 + 10)  # silent: dead since T0 + 10
    assert state(t, "id-late") == "dead"
    assert t.forget_departed(T0 + 10 + forget_s - 0.5) == []
    assert [p.name for p in t.forget_departed(T0 + 10 + forget_s)] == ["late"]
    assert t.observe(ident("late"), T0 + 20 + forget_s) == "joined"  # welcomed back as new

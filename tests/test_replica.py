"""What a replica holder keeps of another node's run, and who holds it (core/replica.py): epochs fence an owner
that was cut off, records arrive in order or ask for a fresh start, and every node names the same holder."""

from __future__ import annotations

from zmqllm.core.replica import ReplicaStore, choose_holder

START = {"workflow": "wf", "source": "wf.toml", "spec": "name = 'wf'", "input": "in"}


def test_a_run_is_held_step_by_step_then_ended_and_never_adopted_after_its_end() -> None:
    store = ReplicaStore()
    assert store.apply("r1", 1, "start", START, "A", "a").ok
    assert store.apply("r1", 1, "task", {"key": "first", "text": "out", "record": {"tokens": 3}}, "A", "a").ok
    held = store.replicas["r1"]
    assert held.spec == START["spec"] and held.tasks == {"first": ("out", {"tokens": 3})}
    assert store.holding("r1") == "replica" and [r.run_id for r in store.orphaned("A")] == ["r1"]
    assert store.apply("r1", 1, "end", {}, "A", "a").ok
    assert store.orphaned("A") == [] and store.holding("r1") is None


def test_an_older_epoch_is_stale_and_names_the_owner_of_the_newer() -> None:
    store = ReplicaStore()
    store.apply("r1", 2, "start", START, "B", "b")  # b adopted the run while a was cut off
    verdict = store.apply("r1", 1, "task", {"key": "x", "text": "", "record": {}}, "A", "a")
    assert not verdict.ok and verdict.stale and verdict.owner == "b"
    assert not store.apply("r1", 1, "start", START, "A", "a").ok  # a restart of the old epoch too


def test_a_record_for_a_run_not_held_asks_for_a_start_instead_of_being_kept() -> None:
    store = ReplicaStore()
    verdict = store.apply("r1", 1, "task", {"key": "x", "text": "t", "record": {}}, "A", "a")
    assert not verdict.ok and not verdict.stale and "r1" not in store.replicas


def test_only_its_owner_may_add_to_or_drop_a_replica() -> None:
    store = ReplicaStore()
    store.apply("r1", 1, "start", START, "A", "a")
    assert not store.apply("r1", 1, "task", {"key": "x", "text": "", "record": {}}, "M", "mallory").ok
    assert not store.apply("r1", 1, "start", START, "M", "mallory").ok
    assert store.replicas["r1"].owner_id == "A"
    store.apply("r1", 1, "drop", {}, "M", "mallory")
    assert "r1" in store.replicas
    store.apply("r1", 1, "drop", {}, "A", "a")
    assert "r1" not in store.replicas


def test_the_store_is_bounded_and_forgets_ended_runs_first() -> None:
    store = ReplicaStore(limit=2)
    store.apply("old", 1, "start", START, "A", "a")
    store.apply("ended", 1, "start", START, "A", "a")
    store.apply("ended", 1, "end", {}, "A", "a")
    store.apply("new", 1, "start", START, "A", "a")
    assert set(store.replicas) == {"old", "new"}


def test_every_node_names_the_same_holder_and_a_leaving_peer_moves_only_its_own_runs() -> None:
    peers = ["n1", "n2", "n3", "n4"]
    runs = [f"run-{i}" for i in range(200)]
    chosen = {run: choose_holder(run, peers) for run in runs}
    assert chosen == {run: choose_holder(run, list(reversed(peers))) for run in runs}
    assert set(chosen.values()) == set(peers)  # spread over every peer
    after = {run: choose_holder(run, ["n1", "n2", "n3"]) for run in runs}
    assert all(after[run] == chosen[run] for run in runs if chosen[run] != "n4")
    assert choose_holder("r", []) is None


def test_a_holder_refuses_records_beyond_its_byte_budget_and_keeps_what_it_holds() -> None:
    store = ReplicaStore(max_bytes=100)
    assert store.apply("r1", 1, "start", {**START, "input": "x" * 60}, "A", "a").ok
    assert not store.apply("r2", 1, "start", {**START, "input": "y" * 60}, "A", "a").ok  # would pass 100 bytes
    assert not store.apply("r1", 1, "task", {"key": "k", "text": "z" * 50, "record": {}}, "A", "a").ok
    assert set(store.replicas) == {"r1"} and store.replicas["r1"].tasks == {}
    assert store.apply("r1", 1, "start", {**START, "input": "w" * 70}, "A", "a").ok  # a restart replaces its own

"""Weighing the answers to a LOOKUP (core/lookup.py): who holds a task or run, and when to stop waiting."""

from __future__ import annotations

from zmqllm.core.lookup import Lookup


def _lookup(*asked: str) -> Lookup:
    return Lookup("task", "t1", frozenset(asked))


def test_a_going_holder_settles_at_once_and_wins_over_an_interrupted_copy() -> None:
    lookup = _lookup("a", "b", "c")
    lookup.answer("a", "interrupted")  # the origin that crashed, restarted with its journal
    assert not lookup.settled() and lookup.holder() == "a"
    lookup.answer("b", "going")  # the node the client moved to
    assert lookup.settled() and lookup.holder() == "b"


def test_finished_beats_interrupted_and_nobody_means_no_holder() -> None:
    lookup = _lookup("a", "b")
    lookup.answer("a", None)
    assert not lookup.settled() and lookup.holder() is None
    lookup.answer("b", None)
    assert lookup.settled() and lookup.holder() is None
    other = _lookup("a", "b")
    other.answer("b", "interrupted")
    other.answer("a", "finished")
    assert other.holder() == "a"


def test_an_answer_from_a_node_not_asked_is_ignored() -> None:
    lookup = _lookup("a")
    assert not lookup.answer("mallory", "going")
    assert lookup.holder() is None and not lookup.settled()


def test_an_unknown_holding_counts_as_nothing() -> None:
    lookup = _lookup("a")
    lookup.answer("a", "from-the-future")
    assert lookup.settled() and lookup.holder() is None


def test_a_lost_peer_stops_being_waited_for_but_keeps_its_answer() -> None:
    lookup = _lookup("a", "b")
    lookup.answer("a", "finished")
    lookup.give_up_on("a")  # answered already: its answer stands
    assert lookup.holder() == "a" and not lookup.settled()
    lookup.give_up_on("b")
    assert lookup.settled() and lookup.holder() == "a"


def test_ties_go_to_the_same_node_whoever_weighs_them() -> None:
    one, two = _lookup("x", "y"), _lookup("x", "y")
    one.answer("y", "finished"), one.answer("x", "finished")
    two.answer("x", "finished"), two.answer("y", "finished")
    assert one.holder() == two.holder() == "x"


def test_runs_across_the_mesh_show_each_run_once_as_its_orchestrator_tells_it() -> None:
    from zmqllm.core.lookup import merge_run_rows

    rows = [
        {"run_id": "r1", "state": "adopted", "orchestrator": "b", "created": 1.0},  # a's copy after it was cut off
        {"run_id": "r1", "state": "done", "orchestrator": "b", "created": 1.5},
        {"run_id": "r2", "state": "replica", "orchestrator": "a"},
        {"run_id": "r3", "state": "running", "orchestrator": "c", "created": 3.0},
        {"run_id": "r3", "state": "replica", "orchestrator": "c"},
    ]
    merged = merge_run_rows(rows)
    assert [(r["run_id"], r["state"]) for r in merged] == [("r3", "running"), ("r1", "done"), ("r2", "replica")]


def test_a_run_offered_under_an_old_epoch_is_superseded_by_a_newer_or_finished_holder() -> None:
    lookup = Lookup("run", "r1", frozenset({"b", "c"}))
    lookup.answer("b", "going", 1)
    assert lookup.supersedes(2) is None  # an older owner going elsewhere does not fence an adopter
    assert lookup.supersedes(1) == "b"
    lookup.answer("c", "finished")
    assert lookup.supersedes(5) == "c"  # a finished run is never finished again

"""Placement, fed candidate lists (no peers, no sockets)."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqllm.core.scheduler import (LEAST_LOADED, POWER_OF_TWO, RANDOM, ROUND_ROBIN, ROUTING_POLICIES, Candidate,
                                   NoRoute, Router, choose_executor, resolve_model)

LIVE = ("alive", "suspect")


def cand(name: str, *, models: tuple[str, ...] = ("gemma",), state: str = "alive", slots: int = 1,
         reported: int = 0, assigned: int = 0, is_self: bool = False) -> Candidate:
    return Candidate(name, models, state, slots, reported, assigned, is_self)


def chosen(candidates: list[Candidate], model: str | None = "gemma", **kwargs: object) -> str:
    return choose_executor(candidates, model, **kwargs)[0].name  # type: ignore[arg-type]


def no_route(candidates: list[Candidate], model: str | None = "gemma", **kwargs: object) -> NoRoute:
    with pytest.raises(NoRoute) as info:
        choose_executor(candidates, model, **kwargs)  # type: ignore[arg-type]
    return info.value


# -- load -------------------------------------------------------------------------------


def test_least_outstanding_work_per_slot_wins() -> None:
    nodes = [cand("a", slots=1, reported=1), cand("b", slots=4, reported=3), cand("c", slots=2, reported=2)]
    assert chosen(nodes) == "b"  # 0.75 per slot beats 1.0 and 1.0


def test_more_slots_can_outweigh_more_work() -> None:
    assert chosen([cand("a", slots=1, reported=1), cand("b", slots=8, reported=7)]) == "b"
    assert chosen([cand("a", slots=1, reported=1), cand("b", slots=8, reported=9)]) == "a"


def test_assigned_by_me_counts_when_larger_than_reported() -> None:
    """A burst spreads at once: work this origin handed out counts before heartbeats report it."""
    nodes = [cand("a", reported=0, assigned=3), cand("b", reported=2, assigned=0)]
    assert chosen(nodes) == "b"
    nodes = [cand("a", reported=3, assigned=1), cand("b", reported=2, assigned=2)]
    assert chosen(nodes) == "b"  # a's outstanding is max(3, 1) = 3, not the sum or the smaller
    assert cand("x", reported=3, assigned=5).outstanding == 5
    assert cand("x", reported=6, assigned=5).outstanding == 6


def test_ties_prefer_self_then_name() -> None:
    assert chosen([cand("b"), cand("a"), cand("c")]) == "a"
    assert chosen([cand("b"), cand("z", is_self=True), cand("a")]) == "z"
    assert chosen([cand("a", reported=1), cand("z", reported=2, is_self=True)]) == "a"  # load comes first


def test_suspect_loses_ties_to_alive() -> None:
    assert chosen([cand("a", state="suspect"), cand("b")]) == "b"
    assert chosen([cand("a", state="suspect"), cand("b", reported=1)]) == "a"  # but not a worse load
    assert chosen([cand("a", state="suspect")]) == "a"  # suspect may still run work


@pytest.mark.parametrize("gone", ["dead", "left"])
def test_dead_and_left_never_chosen(gone: str) -> None:
    assert chosen([cand("a", state=gone), cand("b", reported=50)]) == "b"
    assert no_route([cand("a", state=gone)]).code == "no_peer_for_model"


def test_exclude_is_honoured() -> None:
    nodes = [cand("a"), cand("b", reported=1), cand("c", reported=2)]
    assert chosen(nodes, exclude={"a"}) == "b"
    assert chosen(nodes, exclude={"a", "b"}) == "c"
    error = no_route(nodes, exclude={"a", "b", "c"})
    assert error.code == "no_peer_for_model"


def test_only_nodes_serving_the_model() -> None:
    nodes = [cand("a", models=("qwen",)), cand("b", models=("gemma", "qwen"), reported=5)]
    assert choose_executor(nodes, "gemma") == (nodes[1], "gemma")
    error = no_route(nodes, "llama")
    assert error.code == "no_peer_for_model" and "'llama'" in error.message and "gemma" in error.message


# -- pinning -----------------------------------------------------------------------------


def test_pinned_node_is_taken_whatever_its_load() -> None:
    nodes = [cand("a"), cand("b", reported=100, state="suspect")]
    assert choose_executor(nodes, "gemma", pinned="b") == (nodes[1], "gemma")
    assert chosen(nodes, pinned="a", exclude={"a"}) == "a"  # a pin is never excluded


def test_pinned_unknown() -> None:
    error = no_route([cand("a")], pinned="zed")
    assert error.code == "peer_unknown" and "'zed'" in str(error)


@pytest.mark.parametrize("gone", ["dead", "left"])
def test_pinned_dead(gone: str) -> None:
    error = no_route([cand("a", state=gone), cand("b")], pinned="a")
    assert error.code == "peer_dead" and gone in error.message


def test_pinned_not_serving_the_model() -> None:
    error = no_route([cand("a", models=("qwen",)), cand("b")], "gemma", pinned="a")
    assert error.code == "no_peer_for_model" and "'gemma'" in error.message and "qwen" in error.message


def test_pinned_without_a_model_uses_its_only_one() -> None:
    nodes = [cand("a", models=("qwen",)), cand("b", models=("gemma",))]
    assert choose_executor(nodes, None, pinned="a") == (nodes[0], "qwen")
    error = no_route([cand("a", models=("qwen", "gemma"))], None, pinned="a")
    assert error.code == "bad_request" and "qwen" in error.message and "gemma" in error.message


# -- which model -------------------------------------------------------------------------------


def test_model_none_with_one_model_served_is_that_one() -> None:
    nodes = [cand("a", models=("gemma",)), cand("b", models=("gemma",)), cand("c", models=("qwen",), state="dead")]
    assert resolve_model(nodes, None) == "gemma"
    assert choose_executor(nodes, None)[1] == "gemma"


def test_model_none_with_several_models_is_a_bad_request_listing_them() -> None:
    nodes = [cand("a", models=("qwen",)), cand("b", models=("gemma", "llama"))]
    error = no_route(nodes, None)
    assert error.code == "bad_request"
    assert "gemma, llama, qwen" in error.message


def test_named_model_is_kept_even_if_nobody_serves_it() -> None:
    assert resolve_model([cand("a")], "llama") == "llama"


def test_no_live_node_at_all() -> None:
    nodes = [cand("a", state="dead"), cand("b", state="left")]
    assert no_route(nodes, None).code == "no_peer_for_model"
    assert no_route(nodes, "gemma").code == "no_peer_for_model"
    assert no_route([], None).code == "no_peer_for_model"


# -- property -------------------------------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e", "f")
STATES = ("alive", "suspect", "dead", "left")

candidate_sets = st.lists(
    st.builds(
        lambda models, state, slots, reported, assigned: (models, state, slots, reported, assigned),
        st.sets(st.sampled_from(("gemma", "qwen")), max_size=2).map(lambda s: tuple(sorted(s))),
        st.sampled_from(STATES),
        st.integers(1, 8),
        st.integers(0, 20),
        st.integers(0, 20),
    ),
    min_size=0,
    max_size=len(NAMES),
)


@settings(max_examples=300, deadline=None)
@given(specs=candidate_sets, self_index=st.integers(0, len(NAMES)), exclude=st.sets(st.sampled_from(NAMES)))
def test_choice_is_live_serves_the_model_and_has_the_least_load(specs: list[tuple], self_index: int,
                                                                 exclude: set[str]) -> None:
    candidates = [
        Candidate(NAMES[i], models, "alive" if i == self_index else state, slots, reported, assigned,
                  is_self=i == self_index)
        for i, (models, state, slots, reported, assigned) in enumerate(specs)
    ]
    eligible = [c for c in candidates if c.state in LIVE and "gemma" in c.models and c.name not in exclude]
    try:
        best, model = choose_executor(candidates, "gemma", exclude=exclude)
    except NoRoute as exc:
        assert exc.code == "no_peer_for_model"
        assert eligible == []
        return
    assert model == "gemma"
    assert best.state in LIVE and "gemma" in best.models and best.name not in exclude

    def load(c: Candidate) -> Fraction:
        return Fraction(max(c.reported_work, c.assigned_by_me), c.slots)

    assert all(load(c) >= load(best) for c in eligible)
    tied = [c for c in eligible if load(c) == load(best)]
    if any(c.state == "alive" for c in tied):
        assert best.state == "alive"
        tied = [c for c in tied if c.state == "alive"]
    if any(c.is_self for c in tied):
        assert best.is_self
    else:
        assert best.name == min(c.name for c in tied)


# -- a saturating closed loop, simulated: does placement keep every slot busy? ----------------------------------


def _closed_loop_efficiency(nodes: int, *, know_own_share: bool, slots: int = 2, service_s: float = 1.0,
                            heartbeat_s: float = 0.5, horizon_s: float = 40.0) -> float:
    """Tasks finished ÷ what nodes × slots finish when never idle, for a closed loop of nodes × slots clients
    all submitting to node 0. Every node runs `slots` tasks at once (FIFO queue beyond) for `service_s` each and
    reports its work (running + queued) every `heartbeat_s`, at phases spread over the interval; node 0 sees its
    own work live, as an origin does. `know_own_share`: the origin knows how much of each report was its own
    (today's rule); False: the report and what it assigned are combined by `max` (the rule before)."""
    import heapq

    names = [f"n{i}" for i in range(nodes)]
    running: dict[str, int] = dict.fromkeys(names, 0)
    queued: dict[str, int] = dict.fromkeys(names, 0)
    reported: dict[str, int] = dict.fromkeys(names, 0)
    mine_then: dict[str, int] = dict.fromkeys(names, 0)
    events: list[tuple[float, int, str, str]] = []  # (time, order, kind, node): ends before reports at a tie
    for i, name in enumerate(names[1:], start=1):
        heapq.heappush(events, (heartbeat_s * i / nodes, 1, "report", name))
    finished = 0

    def place(now: float) -> None:
        candidates = [Candidate(name, ("m",), "alive", slots,
                                running[name] + queued[name] if name == "n0" else reported[name],
                                running[name] + queued[name], is_self=name == "n0",
                                reported_mine=(running[name] + queued[name] if name == "n0" else mine_then[name])
                                if know_own_share else None)
                      for name in names]
        target = choose_executor(candidates, "m")[0].name
        if running[target] < slots:
            running[target] += 1
            heapq.heappush(events, (now + service_s, 0, "end", target))
        else:
            queued[target] += 1

    for _ in range(nodes * slots):
        place(0.0)
    while events:
        now, _, kind, name = heapq.heappop(events)
        if now > horizon_s:
            break
        if kind == "report":
            reported[name] = running[name] + queued[name]
            mine_then[name] = reported[name]  # one origin: all of it is its own
            heapq.heappush(events, (now + heartbeat_s, 1, "report", name))
            continue
        finished += 1
        running[name] -= 1
        if queued[name]:
            queued[name] -= 1
            running[name] += 1
            heapq.heappush(events, (now + service_s, 0, "end", name))
        place(now)  # its client submits the next task at once
    return finished / (nodes * slots * horizon_s / service_s)


@pytest.mark.parametrize("nodes", [2, 4, 8])
def test_a_saturating_closed_loop_keeps_every_slot_busy(nodes: int) -> None:
    """Fails on the rule before this change (shown by the second figure): a slot freed since a node's last
    heartbeat looked busy until the next one, so the origin queued tasks on itself while peers idled."""
    assert _closed_loop_efficiency(nodes, know_own_share=True) >= 0.99
    assert _closed_loop_efficiency(nodes, know_own_share=False) < 0.95


def test_other_origins_work_still_counts_from_the_report() -> None:
    """Only this origin's own share of a report is replaced by its exact count; other origins' stays."""
    assert cand("x", reported=5, assigned=1).outstanding == 5  # share unknown: the larger, as before
    known = Candidate("x", ("gemma",), "alive", 2, 5, 1, reported_mine=2)
    assert known.outstanding == 1 + 3  # its own 1 now, plus the 3 of others it reported
    gone = Candidate("x", ("gemma",), "alive", 2, 2, 0, reported_mine=2)
    assert gone.outstanding == 0  # both of its tasks there ended since the report: free now


# -- routing policies ---------------------------------------------------------------------------------------------

def routed(router: Router, candidates: list[Candidate], times: int, **kwargs: object) -> list[str]:
    return [choose_executor(candidates, "gemma", router=router, **kwargs)[0].name  # type: ignore[arg-type]
            for _ in range(times)]


def test_round_robin_cycles_in_name_order_whatever_the_load() -> None:
    nodes = [cand("c"), cand("a", reported=9), cand("b", is_self=True)]
    assert routed(Router(ROUND_ROBIN), nodes, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_goes_on_after_the_last_pick_when_the_nodes_change() -> None:
    router = Router(ROUND_ROBIN)
    assert routed(router, [cand("a"), cand("b"), cand("c")], 2) == ["a", "b"]
    assert routed(router, [cand("a"), cand("b", state="dead"), cand("c"), cand("d")], 3) == ["c", "d", "a"]


def test_random_draws_only_able_nodes_and_a_seed_replays_it() -> None:
    nodes = [cand("a"), cand("b"), cand("c", state="dead"), cand("d", models=("qwen",)), cand("e")]
    first = routed(Router(RANDOM, random.Random(7)), nodes, 60, exclude={"e"})
    assert set(first) == {"a", "b"}
    assert routed(Router(RANDOM, random.Random(7)), nodes, 60, exclude={"e"}) == first


def test_power_of_two_takes_the_less_loaded_of_the_two_it_draws() -> None:
    nodes = [cand("a", slots=2, reported=4), cand("b", slots=1, reported=1), cand("c", slots=4, reported=1)]
    picks = routed(Router(POWER_OF_TWO, random.Random(3)), nodes, 200)
    assert "a" not in picks  # the most loaded loses to whichever it is drawn with
    assert {"b", "c"} <= set(picks)  # b wins only when drawn with a: it is sometimes
    draws = random.Random(3)
    expected = [min(draws.sample(sorted(nodes, key=lambda c: c.name), 2),
                    key=lambda c: c.outstanding / c.slots).name for _ in range(200)]
    assert picks == expected
    assert routed(Router(POWER_OF_TWO), [cand("x", reported=50)], 3) == ["x", "x", "x"]  # one able node


def test_least_loaded_is_the_default_router() -> None:
    nodes = [cand("a", reported=2), cand("b", reported=1), cand("c", reported=3)]
    assert routed(Router(), nodes, 3) == routed(Router(LEAST_LOADED), nodes, 3) == ["b", "b", "b"]
    assert chosen(nodes) == "b"


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="least-loaded, power-of-two, round-robin, random"):
        Router("fastest")


@pytest.mark.parametrize("policy", ROUTING_POLICIES)
def test_pin_and_exclusions_are_the_same_for_every_policy(policy: str) -> None:
    router = Router(policy)
    nodes = [cand("a"), cand("b", reported=100, state="suspect"), cand("c", state="dead"), cand("d")]
    assert routed(router, nodes, 4, pinned="b") == ["b"] * 4
    assert routed(router, nodes, 4, pinned="a", exclude={"a"}) == ["a"] * 4  # a pin is never excluded
    assert set(routed(router, nodes, 20, exclude={"a", "b"})) == {"d"}
    for pinned, code in (("zed", "peer_unknown"), ("c", "peer_dead")):
        with pytest.raises(NoRoute) as info:
            choose_executor(nodes, "gemma", pinned=pinned, router=router)
        assert info.value.code == code
    with pytest.raises(NoRoute) as info:
        choose_executor(nodes, "gemma", exclude={"a", "b", "d"}, router=router)
    assert info.value.code == "no_peer_for_model"

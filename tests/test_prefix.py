"""Prompt prefix summaries and cache-aware placement, pure: hashes, what a node advertises, where a turn goes."""

from __future__ import annotations

from zmqllm.core import protocol
from zmqllm.core.membership import Load
from zmqllm.core.prefix import (
    BLOCK_CHARS, MAX_ADVERTISED, CacheRecord, Placements, block_hashes, parse_advertised, prompt_text, reuse,
)
from zmqllm.core.scheduler import CACHE_AWARE, LEAST_LOADED, Candidate, Router, choose_executor

SYSTEM = "You are a careful assistant who answers in full sentences. " * 20


def chat(*turns: str) -> str:
    messages = [{"role": "system", "content": SYSTEM}]
    for i, turn in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    return prompt_text("", messages)


def test_equal_text_gives_equal_chains_and_a_longer_prompt_extends_them() -> None:
    first = chat("What is a prime number?")
    second = chat("What is a prime number?", "A number with two divisors.", "And a composite one?")
    a, b = block_hashes(first), block_hashes(second)
    assert a and len(b) > len(a) and b[: len(a) - 1] == a[:-1]  # the last whole block of turn 1 may end mid-turn
    assert block_hashes("x" * (BLOCK_CHARS - 1)) == []  # no whole block: nothing to match
    other = block_hashes(chat("Something else entirely, from the first word?"))
    assert other[0] == a[0]  # the shared system prompt
    assert len(block_hashes(SYSTEM + "a" * BLOCK_CHARS)) == len(SYSTEM) // BLOCK_CHARS + 1


def test_reuse_counts_leading_blocks_only() -> None:
    chain = block_hashes(chat("q1", "a1", "q2"))
    assert reuse(chain, frozenset(chain)) == 1.0
    assert reuse(chain, frozenset(chain[:2])) == 2 / len(chain)
    assert reuse(chain, frozenset(chain[1:])) == 0.0  # a hole at the start: nothing reusable
    assert reuse(chain, None) == reuse([], frozenset(chain)) == 0.0


def test_a_record_keeps_as_many_prompts_as_the_engine_holds_newest_first() -> None:
    record = CacheRecord()
    chains = [block_hashes(chat(f"question {i} " * 40)) for i in range(3)]
    for chain in chains:
        record.record("m", chain, capacity=2)
    held = record.advertised(lambda model: 2)["m"]
    assert set(chains[2]) | set(chains[1]) == held  # the oldest is gone from the cache
    assert record.advertised(lambda model: 1)["m"] == frozenset(chains[2])
    assert record.advertised(lambda model: 0) == {}  # unloaded: nothing held


def test_the_summary_is_built_once_until_a_record_changes() -> None:
    record = CacheRecord()
    first, second = (block_hashes(chat(f"topic {i} " * 40)) for i in range(2))
    record.record("m", first, capacity=2)
    summary = record.advertised(lambda model: 2)
    assert record.advertised(lambda model: 2) is summary  # asked on every heartbeat and placement
    record.record("m", second, capacity=2)
    grown = record.advertised(lambda model: 2)
    assert grown is not summary and grown["m"] == frozenset(first) | frozenset(second)
    assert record.advertised(lambda model: 1)["m"] == frozenset(second)  # a shrunk cache is seen at once
    record.forget("m")
    assert record.advertised(lambda model: 2) == {}


def test_the_summary_is_bounded_and_survives_the_wire() -> None:
    record = CacheRecord()
    for i in range(40):
        record.record(f"m{i % 3}", block_hashes(f"{i} " + "y" * (BLOCK_CHARS * 60)), capacity=50)
    advertised = record.advertised(lambda model: 50)
    assert sum(len(v) for v in advertised.values()) == MAX_ADVERTISED
    load = Load(1, 0, 1, 2.0, advertised)
    back = Load.from_fields(protocol.decode(protocol.encode(protocol.make(
        "HEARTBEAT", node_id="n", name="n", endpoint="tcp://127.0.0.1:1", models=["m0"], slots=1,
        load=load.as_fields(), digest="d"))).fields["load"])
    assert back.cache == advertised


def test_a_forged_or_malformed_summary_is_dropped_not_fatal() -> None:
    assert parse_advertised("junk") == {}
    assert parse_advertised({"m": "not a list", 7: [1]}) == {}
    assert parse_advertised({"m": [1, -1, 2**40, True, "x", 2]}) == {"m": frozenset({1, 2})}
    assert sum(map(len, parse_advertised({f"m{i}": list(range(i * 900, i * 900 + 900)) for i in range(3)})
                   .values())) == MAX_ADVERTISED


def node(name: str, work: int, cache: frozenset[int] = frozenset(), loaded: tuple[str, ...] | None = None,
         slots: int = 1) -> Candidate:
    return Candidate(name, ("m",), "alive", slots, work, 0, reported_mine=0, loaded=loaded,
                     cache={"m": cache} if cache else {})


def test_the_next_turn_goes_where_its_history_is_cached_while_load_allows() -> None:
    turn2 = block_hashes(chat("q1", "a1", "q2"))
    history = frozenset(block_hashes(chat("q1")))
    router = Router(CACHE_AWARE)
    nodes = [node("a", 0), node("b", 0, history), node("c", 0)]
    assert choose_executor(nodes, "m", router=router, prefix=turn2)[0].name == "b"
    assert choose_executor(nodes, "m", router=Router(LEAST_LOADED), prefix=turn2)[0].name == "a"  # by name
    busy = [node("a", 0), node("b", 2, history), node("c", 0)]  # two tasks ahead of it: not worth the wait
    assert choose_executor(busy, "m", router=router, prefix=turn2)[0].name == "a"
    assert choose_executor(nodes, "m", router=router, prefix=())[0].name == "a"  # nothing to match: least-loaded


def test_a_cold_load_is_a_cost_not_a_refusal() -> None:
    warm, cold = node("warm", 1, loaded=("m",)), node("cold", 0, loaded=())
    assert choose_executor([warm, cold], "m")[0].name == "warm"  # one task ahead beats loading the model
    assert choose_executor([node("warm", 2, loaded=("m",)), cold], "m")[0].name == "cold"
    assert choose_executor([cold], "m")[0].name == "cold"


def test_an_origin_knows_what_it_placed_before_any_heartbeat() -> None:
    placements = Placements()
    q1, a1, q2 = "What is a prime? " * 10, "A number with exactly two divisors. " * 10, "And one? " * 10
    system = {"role": "system", "content": SYSTEM}
    placements.remember("b", "m", prompt_text("", [system, {"role": "user", "content": q1}], a1))
    turn2 = block_hashes(chat(q1, a1, q2))
    held = placements.held("b", {})["m"]
    assert reuse(turn2, held) > reuse(turn2, frozenset(block_hashes(chat(q1)))) > 0  # the answer counts too
    merged = placements.held("b", {"m": frozenset({7}), "other": frozenset({8})})
    assert merged["other"] == {8} and {7} | held == merged["m"]
    placements.forget("b")
    assert placements.held("b", {}) == {}


def fast_or_slow(fast_work: int, slow_speed: float = 50.0) -> str:
    fast = Candidate("fast", ("m",), "alive", 2, fast_work, 0, reported_mine=0, speed=200.0)
    slow = Candidate("slow", ("m",), "alive", 2, 0, 0, reported_mine=0, speed=slow_speed)
    return choose_executor([slow, fast], "m", router=Router(CACHE_AWARE))[0].name


def test_a_task_waits_where_it_finishes_first() -> None:
    """A node 4x slower: an idle one takes work only once the fast one has three tasks per slot queued (the
    task would finish there sooner); speeds within 2x are noise and split by load alone."""
    assert fast_or_slow(0) == "fast" and fast_or_slow(4) == "fast"  # 2 per slot: (2 + 1) < (0 + 1) x 4
    assert fast_or_slow(8) == "slow"  # 4 per slot: (4 + 1) > 4
    assert fast_or_slow(1, slow_speed=120.0) == "slow"  # 1.7x slower: by load, and it has none
    assert choose_executor([Candidate("a", ("m",), "alive", 1, 0, 0, speed=10.0),
                            Candidate("b", ("m",), "alive", 1, 0, 0, speed=100.0)], "m",
                           router=Router(LEAST_LOADED))[0].name == "a"  # least-loaded ignores speed

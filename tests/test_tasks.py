"""A task's story at its origin, fed executor events by hand (no sockets, no engine)."""

from __future__ import annotations

from typing import Any

import pytest

from zmqllm.core import protocol
from zmqllm.engines.base import GenerationResult
from zmqllm.core.tasks import OriginTask, TaskSpec, done_fields

SPEC = TaskSpec("t-1", "Once upon", 8, {"temperature": 0.0}, ("\n",), "gemma", None)
TIMINGS = {"ttft_ms": 12.5, "total_ms": 80.0, "decode_tok_s": 90.1}
DONE_KEYS = {"finish_reason", "usage", "timings", "executed_by", "executed_on"}


def task(executor: str | None = "b") -> OriginTask:
    t = OriginTask(SPEC, created=10.0)
    if executor is not None:
        t.assign(f"id-{executor}", executor, "gemma")
    return t


def executor_done(name: str = "b", reason: str = "length", completion: int = 3) -> dict[str, Any]:
    return done_fields(name, GenerationResult(reason, 4, completion), TIMINGS)  # type: ignore[arg-type]


# -- tokens ---------------------------------------------------------------------------------


def test_tokens_are_accepted_in_order() -> None:
    t = task()
    assert [t.accept_token(seq, text, [seq]) for seq, text in enumerate([" there", " was", " a"])] == [0, 1, 2]
    assert t.text() == " there was a"
    assert t.tokens == [(" there", [0]), (" was", [1]), (" a", [2])]


def test_duplicate_token_is_refused() -> None:
    t = task()
    t.accept_token(0, "a", [1])
    t.accept_token(1, "b", [2])
    assert t.accept_token(1, "B", [9]) is None
    assert t.accept_token(0, "A", [9]) is None
    assert t.text() == "ab" and len(t.tokens) == 2


def test_gap_is_refused_and_the_missing_token_still_fits() -> None:
    t = task()
    t.accept_token(0, "a", [1])
    assert t.accept_token(2, "c", [3]) is None
    assert t.accept_token(-1, "z", [0]) is None
    assert t.accept_token(1, "b", [2]) == 1
    assert t.text() == "ab"


def test_first_token_starts_streaming_and_records_the_executor() -> None:
    t = task()
    assert (t.state, t.executed_on, t.tried) == ("assigned", [], {"b"})
    t.accept_token(0, "a", [1])
    assert (t.state, t.executed_on) == ("streaming", ["b"])
    t.accept_token(1, "b", [2])
    assert t.executed_on == ["b"]


def test_reassigned_task_records_both_executors_in_order() -> None:
    t = task("b")
    t.accept_token(0, "a", [1])
    t.assign("id-c", "c", "gemma")
    assert (t.state, t.executor_name, t.tried) == ("assigned", "c", {"b", "c"})
    assert t.accept_token(1, "b", [2]) == 1
    assert t.executed_on == ["b", "c"]
    done = t.finish(executor_done("c"))
    assert (done["executed_by"], done["executed_on"], done["text"]) == ("c", ["b", "c"], "ab")


# -- the end ---------------------------------------------------------------------------------


def test_finish_fills_what_the_origin_knows() -> None:
    t = task()
    t.accept_token(0, "one", [1])
    t.accept_token(1, " two", [2])
    done = t.finish({**executor_done("someone-else"), "task_id": "forged"})
    assert set(done) == DONE_KEYS | {"task_id", "text"}
    assert done["task_id"] == "t-1"
    assert done["executed_by"] == "b"  # the origin's record beats what the executor says
    assert done["executed_on"] == ["b"]
    assert done["text"] == "one two"
    assert done["finish_reason"] == "length" and done["usage"] == {"prompt_tokens": 4, "completion_tokens": 3}
    assert (t.state, t.final, t.final_type) == ("done", done, "DONE")
    message = protocol.make("DONE", **done)
    assert protocol.decode(protocol.encode(message)).fields == done


def test_dropping_a_finished_tasks_output_keeps_its_ending_without_the_text() -> None:
    t = task()
    t.accept_token(0, "one", [1])
    done = t.finish(executor_done())
    t.drop_output()
    assert t.tokens == [] and t.output_in_journal and t.final == {k: v for k, v in done.items() if k != "text"}
    assert t.finished and t.final_type == "DONE"


def test_finish_without_tokens_still_names_the_executor() -> None:
    t = task()
    done = t.finish(executor_done("b", "stop", 0))
    assert (done["executed_on"], done["text"], done["executed_by"]) == (["b"], "", "b")


def test_finish_before_any_assignment_keeps_the_given_executor() -> None:
    t = task(executor=None)
    done = t.finish({"finish_reason": "cancelled", "usage": {}, "timings": {}, "executed_by": "", "executed_on": []})
    assert (done["executed_by"], done["executed_on"], done["finish_reason"]) == ("", [], "cancelled")


def test_finished_task_takes_no_more_tokens() -> None:
    t = task()
    t.accept_token(0, "a", [1])
    assert not t.finished
    t.finish(executor_done())
    assert t.finished
    assert t.accept_token(1, "b", [2]) is None
    assert t.text() == "a"


def test_fail_ends_the_task_with_error_fields() -> None:
    t = task()
    t.accept_token(0, "a", [1])
    error = t.fail("peer_dead", "executor b is dead after 1 tokens", retryable=True)
    assert error == {"task_id": "t-1", "code": "peer_dead", "message": "executor b is dead after 1 tokens",
                     "retryable": True}
    assert (t.state, t.finished, t.final, t.final_type) == ("failed", True, error, "ERROR")
    assert t.accept_token(1, "b", [2]) is None
    assert protocol.make("ERROR", **error).fields == error


def test_fail_after_finish_is_guarded_by_finished() -> None:
    """The origin ends a task only while `finished` is False; finishing must set it, so a
    later failure (executor lost, client gone) cannot replace the DONE already sent."""
    for end in (lambda t: t.finish(executor_done()), lambda t: t.fail("busy", "x")):
        t = task()
        assert not t.finished
        end(t)
        assert t.finished and t.state in ("done", "failed")


@pytest.mark.parametrize("state", ["routing", "assigned", "streaming"])
def test_only_final_states_are_finished(state: str) -> None:
    t = task()
    t.state = state  # type: ignore[assignment]
    assert not t.finished


# -- shapes ---------------------------------------------------------------------------------------


def test_done_fields_shape() -> None:
    fields = done_fields("node-a", GenerationResult("stop", 7, 5), TIMINGS)
    assert fields == {
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 7, "completion_tokens": 5},
        "timings": TIMINGS,
        "executed_by": "node-a",
        "executed_on": ["node-a"],
    }
    message = protocol.make("DONE", task_id="t-1", **fields)
    assert protocol.decode(protocol.encode(message)).fields == {"task_id": "t-1", **fields}


def test_spec_from_a_decoded_submit() -> None:
    submit = protocol.make("SUBMIT", id=1, task_id="t-9", prompt="p", max_tokens=3, params={"seed": 1},
                           stop=["a", "b"])
    spec = TaskSpec.from_submit(protocol.decode(protocol.encode(submit)).fields)
    assert spec == TaskSpec("t-9", "p", 3, {"seed": 1}, ("a", "b"), None, None)
    pinned = protocol.make("SUBMIT", id=1, task_id="t-9", prompt="p", max_tokens=3, params={}, stop=[],
                           model="gemma", peer="b")
    spec = TaskSpec.from_submit(protocol.decode(protocol.encode(pinned)).fields)
    assert (spec.model, spec.peer) == ("gemma", "b")


def test_summary_row() -> None:
    t = task()
    t.accept_token(0, "a", [1])
    assert t.summary(now=12.3456) == {"task_id": "t-1", "state": "streaming", "model": "gemma", "executor": "b",
                                      "tokens": 1, "elapsed_s": 2.346}

"""The workflow run state machine, driven by hand: no sockets, no clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from zmqllm.workflow import Run, TaskRequest, Workflow, load_workflow, parse_workflow

EXAMPLES = Path(__file__).parent.parent / "configs" / "workflows"

LOOP_SPEC = '''
[defaults]
max_tokens = 32
temperature = 0.0

[[steps]]
name = "draft"
prompt = "Q: {input}\\nA:"

[[steps]]
name = "polish"
text = "{draft}"
max_rounds = 3
until = "(?i)no changes"
until_stage = "critique"
  [[steps.stages]]
  name = "critique"
  prompt = "Text: {text}\\nRound {round}\\nCritique:"
  [[steps.stages]]
  name = "revise"
  max_tokens = 64
  prompt = "Text: {text}\\nCritique: {critique}\\nRevised:"
'''


def spec(text: str) -> Workflow:
    return parse_workflow(text, "test.toml")


def fan(count: int = 3, merge: str = "vote", extra: str = "", top: str = "") -> Workflow:
    return spec(f'{top}\n[[steps]]\nname = "answers"\nprompt = "Q: {{input}}\\nA:"\n'
                f'fan_out = {count}\nmerge = "{merge}"\n{extra}')


def drive(run: Run, reply: Callable[[TaskRequest], str], limit: int = 200) -> list[TaskRequest]:
    """Complete every task as it is handed out; returns them in hand-out order."""
    seen: list[TaskRequest] = []
    while not run.finished:
        batch = run.next_tasks()
        assert batch, f"stuck: {run.step_states()}"
        for request in batch:
            seen.append(request)
            run.task_done(request.key, reply(request))
        assert len(seen) < limit
    return seen


def last_line(request: TaskRequest) -> str:
    return request.prompt.splitlines()[-1]


# -- plain steps and ordering -----------------------------------------------------------


def test_a_chain_runs_step_after_step_with_outputs_stripped() -> None:
    run = Run(spec('[[steps]]\nname = "a"\nprompt = "say {input}"\n[[steps]]\nname = "b"\n'
                   'prompt = "[{a}]"\nmax_tokens = 9\nstop = ["."]\nmodel = "m"\npeer = "n1"'), "hi")
    (first,) = run.next_tasks()
    assert (first.key, first.step, first.prompt, first.attempt, first.avoid) == ("a", "a", "say hi", 1, ())
    assert run.next_tasks() == []  # handed out once
    run.task_done("a", "  hello \n")
    (second,) = run.next_tasks()
    assert (second.prompt, second.max_tokens, second.stop, second.model, second.peer) == (
        "[hello]", 9, (".",), "m", "n1")
    assert not run.finished
    run.task_done("b", "done")
    assert run.finished and not run.failed and run.output == "done"


def test_independent_steps_are_handed_out_together_and_output_picks_a_step() -> None:
    run = Run(spec('output = "x"\n[[steps]]\nname = "x"\nprompt = "1"\n[[steps]]\nname = "y"\nprompt = "2"'), "")
    assert [r.key for r in run.next_tasks()] == ["x", "y"]
    run.task_done("y", "why")
    run.task_done("x", "ex")
    assert run.output == "ex"


def test_reports_for_unknown_or_unhanded_tasks_raise() -> None:
    run = Run(spec('[[steps]]\nname = "a"\nprompt = "{input}"'), "q")
    with pytest.raises(ValueError, match="not handed out"):
        run.task_done("a", "early")
    run.next_tasks()
    with pytest.raises(KeyError, match="no task 'zz'"):
        run.task_done("zz", "x")
    run.task_done("a", "x")
    with pytest.raises(ValueError):
        run.task_done("a", "twice")


# -- fan-out and merges ------------------------------------------------------------------


def test_fan_out_branches_get_consecutive_seeds_and_vote() -> None:
    run = Run(fan(3, extra="seed = 7\ntemperature = 0.7"), "capital of France?")
    requests = run.next_tasks()
    assert [r.key for r in requests] == ["answers#1", "answers#2", "answers#3"]
    assert [r.params for r in requests] == [{"temperature": 0.7, "seed": s} for s in (7, 8, 9)]
    for request, text in zip(requests, [" Paris.\nMore", "Lyon", "paris"]):
        run.task_done(request.key, text)
    assert run.output == "Paris."


def test_fan_out_without_a_seed_numbers_branches_from_zero() -> None:
    assert [r.params["seed"] for r in Run(fan(3), "q").next_tasks()] == [0, 1, 2]


def test_concat_waits_for_every_branch_and_keeps_branch_order() -> None:
    run = Run(fan(3, "concat", 'separator = " + "'), "q")
    requests = run.next_tasks()
    for request, text in reversed(list(zip(requests, ["one", "two", "three"]))):
        assert not run.finished
        run.task_done(request.key, text)
    assert run.output == "one + two + three"


def test_llm_merge_is_one_more_task_whose_prompt_holds_every_branch() -> None:
    workflow = fan(3, "llm", 'merge_prompt = "For {input}:\\n{branches}\\nBest:"\n'
                             'temperature = 0.8\n[steps.merge_settings]\nmax_tokens = 5\ntemperature = 0.0')
    run = Run(workflow, "q")
    outputs = ["alpha\nsecond line", "beta", "gamma\n\nlong tail"]
    for request, text in zip(run.next_tasks(), outputs):
        run.task_done(request.key, text)
    (merge,) = run.next_tasks()
    assert merge.key == "answers:merge" and merge.max_tokens == 5 and merge.params == {"temperature": 0.0}
    assert all(text.strip() in merge.prompt for text in outputs)
    assert merge.prompt.startswith("For q:\n[1] alpha\nsecond line\n\n[2] beta\n\n[3] gamma")
    assert not run.finished
    run.task_done("answers:merge", " beta ")
    assert run.output == "beta"
    assert run.step_states()[0]["tasks_done"] == run.step_states()[0]["tasks_total"] == 4


# -- split ------------------------------------------------------------------------------

SPLIT = ('max_fan_out = 3\n[[steps]]\nname = "map"\nsplit = "input"\nchunk_chars = 20\n'
         'prompt = "Part {chunk_index}: {chunk}"\nmerge = "concat"\nseparator = "|"\n')


def test_split_runs_one_branch_per_chunk() -> None:
    run = Run(spec(SPLIT), "First part here.\n\nSecond part here.")
    requests = run.next_tasks()
    assert [(r.key, r.prompt) for r in requests] == [
        ("map#1", "Part 1: First part here."), ("map#2", "Part 2: Second part here.")]
    assert "seed" not in requests[0].params
    for request in requests:
        run.task_done(request.key, request.prompt[:6])
    assert run.output == "Part 1|Part 2"


def test_split_by_tokens_uses_the_given_counter() -> None:
    workflow = spec(SPLIT.replace("chunk_chars = 20", "chunk_tokens = 2"))
    assert len(Run(workflow, "a b c d e").next_tasks()) == 3
    assert len(Run(workflow, "a b c d e", count_tokens=lambda text: len(text.split()) // 3).next_tasks()) == 1


def test_too_many_chunks_fail_the_run_at_planning_time() -> None:
    run = Run(spec(SPLIT), "word " * 30)
    assert run.finished and run.failed and run.next_tasks() == []
    assert run.error == ("step 'map' failed: {input} splits into 8 chunks, more than max_fan_out 3; "
                         "raise 'chunk_chars' or 'max_fan_out'")


def test_an_empty_split_input_fails_the_step() -> None:
    run = Run(spec(SPLIT), "   ")
    assert run.failed and run.error == "step 'map' failed: nothing to split: {input} is empty"


# -- loops ------------------------------------------------------------------------------


def critic(verdicts: list[str]) -> Callable[[TaskRequest], str]:
    """Drafts 'D', revisions 'R<round>', critiques taken from `verdicts` in turn."""
    def reply(request: TaskRequest) -> str:
        if request.key == "draft":
            return "D"
        if request.key.endswith(".critique"):
            return verdicts.pop(0)
        return "R" + request.key.split("@")[1].split(".")[0]
    return reply


def test_loop_stops_at_the_pattern_with_the_current_text() -> None:
    run = Run(spec(LOOP_SPEC), "q")
    requests = drive(run, critic(["too short", "No changes."]))
    assert [r.key for r in requests] == ["draft", "polish@1.critique", "polish@1.revise", "polish@2.critique"]
    assert requests[1].prompt == "Text: D\nRound 1\nCritique:"
    assert requests[2].prompt == "Text: D\nCritique: too short\nRevised:" and requests[2].max_tokens == 64
    assert requests[3].prompt == "Text: R1\nRound 2\nCritique:"
    assert run.output == "R1"
    polish = run.step_states()[1]
    assert (polish["ended_by"], polish["rounds"], polish["tasks_done"], polish["tasks_total"]) == ("pattern", 2, 3, 3)


def test_loop_satisfied_in_round_one_keeps_the_initial_text() -> None:
    run = Run(spec(LOOP_SPEC), "q")
    drive(run, critic(["no changes needed"]))
    assert run.output == "D" and run.step_states()[1]["ended_by"] == "pattern"


def test_loop_stops_at_its_round_limit_with_the_last_revision() -> None:
    run = Run(spec(LOOP_SPEC), "q")
    requests = drive(run, critic(["bad", "worse", "still bad"]))
    assert requests[-1].key == "polish@3.revise"
    assert run.output == "R3"
    polish = run.step_states()[1]
    assert (polish["ended_by"], polish["rounds"], polish["tasks_done"]) == ("rounds", 3, 6)


def test_loop_without_until_runs_every_round() -> None:
    run = Run(spec(LOOP_SPEC.replace('until = "(?i)no changes"\nuntil_stage = "critique"\n', "")), "q")
    drive(run, critic(["no changes"] * 3))
    assert run.output == "R3" and run.step_states()[1]["ended_by"] == "rounds"


# -- failures, retries, optional steps ------------------------------------------------------


def test_a_failed_task_is_retried_on_peers_not_tried_then_fails_the_run() -> None:
    run = Run(spec('[defaults]\nretries = 2\n[[steps]]\nname = "a"\nprompt = "{input}"\n'
                   '[[steps]]\nname = "b"\nprompt = "{a}"\n[[steps]]\nname = "c"\nprompt = "{input}!"'), "q")
    first, other = run.next_tasks()
    run.task_started("a", "n1")
    run.task_failed("a", "busy")
    (retry,) = run.next_tasks()
    assert (retry.key, retry.attempt, retry.avoid) == ("a", 2, ("n1",))
    run.task_failed("a", "peer died", peer="n2")
    (retry,) = run.next_tasks()
    assert (retry.attempt, retry.avoid) == (3, ("n1", "n2"))
    assert not run.finished
    run.task_started("a", "n3")
    run.task_failed("a", "out of memory")
    assert run.finished and run.failed and run.output is None
    assert run.error == "step 'a' failed: task 'a' failed after 3 attempts: out of memory"
    states = {s["name"]: s["state"] for s in run.step_states()}
    assert states == {"a": "failed", "b": "skipped", "c": "skipped"}
    assert run.outstanding() == ["c"] and run.next_tasks() == []
    run.task_done("c", "late")  # in flight when the run failed: accepted, ignored
    assert run.outstanding() == [] and run.error.endswith("out of memory")


def test_a_pending_retry_is_not_handed_out_once_the_run_failed() -> None:
    run = Run(spec('[[steps]]\nname = "a"\nprompt = "1"\nretries = 0\n[[steps]]\nname = "b"\nprompt = "2"'), "")
    run.next_tasks()
    run.task_failed("b", "crash", peer="n1")  # b waits for its retry ...
    run.task_failed("a", "crash", peer="n2")  # ... when a ends the run
    assert run.failed and run.next_tasks() == [] and run.outstanding() == []


def test_retries_zero_fails_at_once() -> None:
    run = Run(spec('[[steps]]\nname = "a"\nprompt = "{input}"\nretries = 0'), "q")
    run.next_tasks()
    run.task_failed("a", "timeout", peer="n1")
    assert run.error == "step 'a' failed: task 'a' failed after 1 attempt: timeout"


def test_an_optional_step_failure_gives_empty_output_and_the_run_goes_on() -> None:
    run = Run(spec('[[steps]]\nname = "extra"\nprompt = "{input}"\noptional = true\nretries = 0\n'
                   '[[steps]]\nname = "final"\nprompt = "<{extra}>"'), "q")
    run.next_tasks()
    run.task_failed("extra", "no peer serves the model")
    (final,) = run.next_tasks()
    assert final.prompt == "<>"
    run.task_done("final", "ok")
    assert run.finished and not run.failed and run.output == "ok"
    assert run.failures == ["step 'extra': task 'extra' failed after 1 attempt: no peer serves the model"]
    extra = run.step_states()[0]
    assert (extra["state"], extra["output"], extra["error"]) == (
        "failed", "", "task 'extra' failed after 1 attempt: no peer serves the model")


def test_an_optional_split_with_too_many_chunks_does_not_fail_the_run() -> None:
    workflow = spec(SPLIT.replace('merge = "concat"', 'merge = "concat"\noptional = true') +
                    '[[steps]]\nname = "after"\nprompt = "got [{map}]"')
    run = Run(workflow, "word " * 30)
    (after,) = run.next_tasks()
    assert after.prompt == "got []" and "8 chunks" in run.failures[0]


def test_late_branch_results_of_a_failed_optional_step_are_ignored() -> None:
    run = Run(fan(2, extra="optional = true\nretries = 0"), "q")
    run.next_tasks()
    run.task_failed("answers#1", "boom")
    assert run.finished and run.output == ""
    run.task_done("answers#2", "fine")
    assert run.output == "" and not run.failed


# -- distinct peers ---------------------------------------------------------------------


def test_distinct_peers_avoid_where_siblings_run() -> None:
    run = Run(fan(3, extra="distinct_peers = true\nretries = 1"), "q")
    assert all(r.avoid == () for r in run.next_tasks())
    run.task_started("answers#1", "n1")
    run.task_started("answers#2", "n2")
    assert run.peers_to_avoid("answers#3") == ("n1", "n2")
    assert run.peers_to_avoid("answers#1") == ("n2",)
    run.task_done("answers#2", "x")  # a finished sibling's peer is still avoided
    run.task_failed("answers#1", "crash")
    (retry,) = run.next_tasks()
    assert retry.avoid == ("n1", "n2")


def test_without_distinct_peers_only_failed_peers_are_avoided() -> None:
    run = Run(fan(2, extra="retries = 1"), "q")
    run.next_tasks()
    run.task_started("answers#1", "n1")
    run.task_started("answers#2", "n2")
    run.task_failed("answers#2", "crash")
    assert run.peers_to_avoid("answers#1") == ()
    assert run.next_tasks()[0].avoid == ("n2",)


# -- resume -----------------------------------------------------------------------------


@dataclass
class Journaled:
    text: str
    prompt: str | None = None


def test_resume_replays_done_tasks_and_asks_only_for_the_rest() -> None:
    workflow = spec(LOOP_SPEC)
    full = Run(workflow, "q")
    outputs: dict[str, str] = {}
    reply = critic(["meh", "bad", "no changes"])
    all_requests = drive(full, lambda r: outputs.setdefault(r.key, reply(r)))
    assert len(all_requests) == 6
    journal = {r.key: Journaled(outputs[r.key]) for r in all_requests[:4]}  # draft, round 1, round 2 critique

    resumed = Run(workflow, "q", done=journal)
    rest = drive(resumed, critic(["no changes"]))
    assert [r.key for r in rest] == [r.key for r in all_requests[4:]] == ["polish@2.revise", "polish@3.critique"]
    assert [r.prompt for r in rest] == [r.prompt for r in all_requests[4:]]
    assert resumed.output == full.output == "R2"
    assert resumed.step_states() == full.step_states()


def test_resume_with_everything_done_finishes_without_tasks() -> None:
    run = Run(fan(2, "concat"), "q", done={"answers#1": "a", "answers#2": "b"})
    assert run.finished and run.output == "a\n\nb" and run.next_tasks() == []


def test_a_stale_journal_entry_is_run_again() -> None:
    workflow = spec('[[steps]]\nname = "a"\nprompt = "Q: {input}"')
    fresh = Run(workflow, "new", done={"a": Journaled("old answer", prompt="Q: old")})
    (request,) = fresh.next_tasks()
    assert request.prompt == "Q: new"
    same = Run(workflow, "new", done={"a": Journaled("kept", prompt="Q: new")})
    assert same.output == "kept"


# -- determinism and the examples ----------------------------------------------------------


def test_two_runs_ask_for_the_same_tasks() -> None:
    def trace() -> list[TaskRequest]:
        return drive(Run(spec(LOOP_SPEC), "q"), critic(["a", "b", "c"]))

    assert trace() == trace()


@pytest.mark.parametrize("name, input, reply, expected", [
    ("ensemble", "What is the largest planet?",
     lambda r: {"answer#1": " Jupiter\nQ:", "answer#2": "Saturn", "answer#3": "jupiter."}[r.key], "Jupiter"),
    ("draft-critique-revise", "Why is the sky blue?",
     lambda r: "No changes." if r.key == "polish@2.critique" else last_line(r), "Revised answer:"),
    ("map-reduce-summary", "\n\n".join(f"Paragraph {i}. " + "Words go here. " * 40 for i in range(5)),
     last_line, "Overall summary:"),
])
def test_examples_run_end_to_end_with_fake_outputs(name: str, input: str, reply: Callable[[TaskRequest], str],
                                                   expected: str) -> None:
    run = Run(load_workflow(EXAMPLES / f"{name}.toml"), input)
    requests = drive(run, reply)
    assert run.finished and not run.failed and run.output == expected
    assert all(state["state"] == "done" for state in run.step_states())
    assert all("{" not in r.prompt for r in requests)
    if name == "map-reduce-summary":
        assert [r.key for r in requests][-1] == "summary:merge" and len(requests) == 6
        assert all(f"[{i}] Summary:" in requests[-1].prompt for i in range(1, 6))
    if name == "draft-critique-revise":
        assert [r.key for r in requests] == ["draft", "polish@1.critique", "polish@1.revise", "polish@2.critique"]
        assert requests[1].stop == ("\n",) and requests[0].stop == ("\n",) and requests[0].max_tokens == 96
        assert requests[1].max_tokens == 48  # the critique stage's own setting


def test_a_daemons_run_hands_its_split_out_and_waits_for_the_chunks() -> None:
    """With split_inline=False the run never counts tokens itself: a daemon cuts the input on a worker thread."""
    calls: list[str] = []
    run = Run(spec(SPLIT.replace("chunk_chars = 20", "chunk_tokens = 3")), "First part here. Second part here.",
              split_inline=False, count_tokens=lambda text: len(calls.append(text) or text.split()))
    assert run.next_tasks() == [] and not run.finished
    [split] = run.splits_wanted()
    assert run.splits_wanted() == []  # handed out once
    assert split.step == "map" and split.text == "First part here. Second part here." and calls == []
    run.split_done("map", split.chunks())
    assert calls
    assert [r.key for r in run.next_tasks()] == ["map#1", "map#2"]
    with pytest.raises(ValueError):
        run.split_done("map", ["again"])


def test_a_handed_out_split_that_fails_or_makes_too_many_chunks_fails_the_step() -> None:
    run = Run(spec(SPLIT), "x", split_inline=False)
    run.split_failed(run.splits_wanted()[0].step, "splitting failed: model is closed")
    assert run.failed and run.error == "step 'map' failed: splitting failed: model is closed"
    run = Run(spec(SPLIT), "x", split_inline=False)
    run.split_done(run.splits_wanted()[0].step, ["a", "b", "c", "d"])
    assert run.failed and "splits into 4 chunks, more than max_fan_out 3" in (run.error or "")

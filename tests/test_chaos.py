"""`zmqllm bench chaos`: the fault schedule and the checks of every stream (pure, in milliseconds), then the
short version of the real thing: daemons killed, frozen and restarted under concurrent clients, and not one
token lost, twice, out of order or wrong, every task ended once, no process left."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from conftest import process_gone, run_cli, sigint_as_usual, wait_until
from zmqllm.bench.chaos import (
    MIN_SERVING,
    RESTART_GRACE_S,
    Fault,
    TaskRecord,
    check_task,
    parse_interval,
    percentile,
    plan_faults,
)

NAMES = ["n0", "n1", "n2", "n3", "n4"]


# -- the schedule --------------------------------------------------------------------------------------

def serving_at(plan: list[Fault], names: list[str], at: float) -> set[str]:
    """The nodes serving just after `at`, recomputed from the plan as intervals of being out."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    killed_at: dict[str, float] = {}
    for fault in plan:
        if fault.kind == "kill":
            killed_at[fault.node] = fault.at_s
        elif fault.kind == "restart":
            out[fault.node].append((killed_at.pop(fault.node), fault.at_s + RESTART_GRACE_S))
        else:
            out[fault.node].append((fault.at_s, fault.at_s + fault.hold_s))
    for node, since in killed_at.items():
        out[node].append((since, float("inf")))
    return {name for name in names if not any(start <= at < end for start, end in out[name])}


@pytest.mark.parametrize("seed", range(20))
def test_a_schedule_always_leaves_two_nodes_serving(seed):
    plan = plan_faults(NAMES, 120, (1, 3), (1, 3), seed)
    assert len(plan) >= 30
    assert {f.kind for f in plan} == {"kill", "stop", "restart"}
    for fault in plan:
        assert len(serving_at(plan, NAMES, fault.at_s)) >= MIN_SERVING, fault


def test_a_schedule_only_restarts_killed_nodes_and_only_faults_serving_ones():
    plan = plan_faults(NAMES, 300, (0.5, 1), (1, 3), 3)
    killed: set[str] = set()
    for fault in plan:
        if fault.kind == "restart":
            assert fault.node in killed
            killed.discard(fault.node)
        else:
            assert fault.node in serving_at(plan, NAMES, fault.at_s - 1e-6)
            if fault.kind == "kill":
                killed.add(fault.node)
            else:
                assert 1 <= fault.hold_s <= 3


def test_the_seed_replays_the_schedule():
    assert plan_faults(NAMES, 60, (1, 3), (1, 3), 7) == plan_faults(NAMES, 60, (1, 3), (1, 3), 7)
    assert plan_faults(NAMES, 60, (1, 3), (1, 3), 7) != plan_faults(NAMES, 60, (1, 3), (1, 3), 8)
    plan = plan_faults(NAMES, 60, (1, 3), (1, 3), 7)
    assert all(b.at_s - a.at_s >= 0.999 for a, b in zip(plan, plan[1:])) and plan[-1].at_s < 60


def test_intervals_parse_and_bad_ones_say_why():
    assert parse_interval("1-3") == (1.0, 3.0)
    assert parse_interval("0.5") == (0.5, 0.5)
    for bad in ("3-1", "x", "0-1", "-1"):
        with pytest.raises(ValueError):
            parse_interval(bad)


# -- judging one task ------------------------------------------------------------------------------

def record(seqs: list[int], *, words: str = "a b c", max_tokens: int = 5, ending: dict | None = None,
           texts: list[str] | None = None) -> TaskRecord:
    cycle = [w + " " for w in words.split()]
    events: list[dict] = [{"type": "accepted"}]
    events += [{"type": "token", "seq": s, "text": (texts or [])[i] if texts else cycle[s % len(cycle)]}
               for i, s in enumerate(seqs)]
    if ending is None:
        ending = {"type": "done", "finish_reason": "length", "usage": {"completion_tokens": max_tokens},
                  "text": "".join(cycle[i % len(cycle)] for i in range(max_tokens))}
    events.append(ending)
    return TaskRecord("t", words, max_tokens, "n0", 0.0, events, ended=1.0)


def test_a_whole_stream_passes():
    verdict = check_task(record([0, 1, 2, 3, 4]))
    assert not verdict.violated and verdict.outcome == "done" and verdict.ended_once


def test_a_gap_is_lost_tokens():
    assert check_task(record([0, 1, 3, 4])).lost == 1


def test_a_seq_twice_is_a_duplicate_and_a_step_back_a_reorder():
    verdict = check_task(record([0, 1, 2, 2, 3, 4]))
    assert verdict.duplicated == 1 and verdict.violated
    assert check_task(record([0, 2, 1, 3, 4])).reordered == 1


def test_a_wrong_word_or_a_short_done_is_a_mismatch():
    assert check_task(record([0, 1, 2, 3, 4], texts=["a ", "b ", "x ", "a ", "b "])).mismatched
    short = {"type": "done", "finish_reason": "cancelled", "usage": {"completion_tokens": 2}, "text": "a b "}
    verdict = check_task(record([0, 1], ending=short))
    assert verdict.lost == 3 and verdict.mismatched  # nobody cancelled it: the rest was lost


def test_an_error_is_a_failure_with_its_reason_not_a_violation():
    error = {"type": "error", "code": "peer_dead", "message": "no node left"}
    verdict = check_task(record([0, 1], ending=error))
    assert verdict.outcome == "peer_dead" and not verdict.violated


def test_two_endings_or_none_break_the_ending_invariant():
    twice = record([0, 1, 2, 3, 4])
    twice.events.append(dict(twice.events[-1]))
    assert check_task(twice).endings == 2 and check_task(twice).violated
    hung = TaskRecord("t", "a b", 5, "n0", 0.0, [{"type": "accepted"}], ended=30.0, gave_up="hung")
    assert not check_task(hung).ended_once
    unreachable = TaskRecord("t", "a b", 5, "n0", 0.0, [], ended=1.0, gave_up="unreachable: no answer")
    assert check_task(unreachable).ended_once and check_task(unreachable).outcome == "unreachable"


def test_percentiles_are_nearest_rank():
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(range(100)), 0.99) == 99
    assert percentile([], 0.5) is None


# -- the real thing, short ------------------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_the_mesh_survives_chaos_with_every_stream_whole(zmqllm_env):
    argv = [sys.executable, "-m", "zmqllm", "bench", "chaos", "--json", "--nodes", "5", "--clients", "4",
            "--calm", "4", "--duration", "24", "--fault-every", "0.6-1.1", "--seed", "11"]
    proc = subprocess.run(argv, env=zmqllm_env, capture_output=True, text=True, timeout=200)
    report = json.loads(proc.stdout)
    f = report["figures"]
    context = proc.stderr[-3000:] + json.dumps({k: f[k] for k in ("tasks", "violation_samples", "processes")})
    assert report["name"] == "chaos" and {"settings", "figures", "ratio", "goal", "met"} <= report.keys()
    assert f["tasks"]["submitted"] >= 100 and f["faults"]["injected"] >= 20, context
    assert f["tokens"]["lost"] == f["tokens"]["duplicated"] == f["tokens"]["reordered"] == 0, context
    assert f["tokens"]["mismatched_tasks"] == 0, context
    assert f["endings"]["exactly_once"] == f["tasks"]["submitted"], context
    assert f["processes"]["leaked"] == [] and f["processes"]["reaped"] == f["processes"]["started"], context
    assert f["failovers"]["origin"] + f["failovers"]["executor"] > 0, context
    runs = f["runs"]  # workflow runs through the same faults: each ended once, none finished by two nodes
    assert runs["submitted"] >= 5 and runs["done"] >= 1 and runs["violations"] == 0, json.dumps(runs)
    assert report["met"] and proc.returncode == 0, context


def test_a_bad_fault_interval_is_one_line_and_exit_2(zmqllm_env):
    proc = run_cli(zmqllm_env, "bench", "chaos", "--fault-every", "3-1", timeout=30)
    assert proc.returncode == 2 and "--fault-every" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(120)
def test_ctrl_c_stops_the_chaos_and_reaps_every_daemon(zmqllm_env):
    proc = subprocess.Popen([sys.executable, "-m", "zmqllm", "bench", "chaos", "--nodes", "3", "--duration", "60",
                             "--calm", "30"], env=zmqllm_env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_usual)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the mesh is up and the clients are running
            if "nodes up" in line:
                break
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            daemons = [int(pid) for pid in f.read().split()]
        assert len(daemons) == 3
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "bench: interrupted" in err and "Traceback" not in err, err
        wait_until(lambda: all(process_gone(pid) for pid in daemons), 10, what="its daemons to be gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_run_is_judged_by_its_one_ending_its_output_and_its_steps() -> None:
    from zmqllm.bench.chaos_runs import RunRecord, check_run, expected_output, finished_once

    def done(output: str, keys: list[str]) -> dict:
        return {"type": "done", "output": output, "tasks": [{"key": key} for key in keys]}

    good = RunRecord("r", "kilo lima mike", "n0", 0.0, [{"type": "run"}, done(expected_output("kilo lima mike"),
                                                                               ["first", "second"])])
    assert check_run(good) == ""
    twice = RunRecord("r", "kilo", "n0", 0.0, [{"type": "run"}, done(expected_output("kilo"),
                                                                     ["first", "second", "second"])])
    assert "step outputs" in check_run(twice)
    wrong = RunRecord("r", "kilo", "n0", 0.0, [done("something else", ["first", "second"])])
    assert "output" in check_run(wrong)
    two_ends = RunRecord("r", "kilo", "n0", 0.0, [{"type": "error", "code": "x"}, done("", [])])
    assert "endings" in check_run(two_ends)
    failed = RunRecord("r", "kilo", "n0", 0.0, [{"type": "error", "code": "run_unknown"}])
    assert check_run(failed) == ""  # a failure with its reason, not a violation
    rows = {"n0": [{"run_id": "r", "state": "done"}], "n3": [{"run_id": "r", "state": "done"}],
            "n1": [{"run_id": "s", "state": "done"}, {"run_id": "r", "state": "adopted"}]}
    assert finished_once(rows, ["r", "s"]) == {"r": ["n0", "n3"]}

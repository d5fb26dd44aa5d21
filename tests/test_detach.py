"""Detached tasks (`submit --detach`): the id comes back at once, the task runs on without its client, its result
is found through any node, and it survives its origin dying (real daemons, echo engine)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import run_cli, states, wait_until

from zmqllm.client import Client

PROMPT = "detached words keep going"
TOKENS = 40


@pytest.fixture
def trio(spawn: Any) -> list[Any]:
    a = spawn("a", "--echo-rate", "20")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "20")
    c = spawn("c", "--peer", a.endpoint, "--echo-rate", "20")
    wait_until(lambda: all(list(states(n).values()) == ["alive"] * 3 for n in (a, b, c)), 10, what="mesh")
    return [a, b, c]


def _expected(endpoint: str) -> str:
    with Client(endpoint, timeout=10) as client:
        return str([e for e in client.submit(PROMPT, max_tokens=TOKENS, params={"temperature": 0.0})][-1]["text"])


def _result(env: dict[str, str], endpoint: str, task_id: str) -> dict[str, Any] | None:
    found = run_cli(env, "result", task_id, "--json", "--connect", endpoint, "--timeout", "5", timeout=30)
    return json.loads(found.stdout) if found.returncode == 0 else None


def test_detach_prints_the_id_at_once_and_the_result_comes_through_any_node(trio, zmqllm_env) -> None:
    a, b, _ = trio
    started = time.monotonic()
    detached = run_cli(zmqllm_env, "submit", PROMPT, "--max-tokens", str(TOKENS), "--temperature", "0",
                       "--detach", "--connect", a.endpoint, timeout=30)
    assert detached.returncode == 0, detached.stderr
    task_id = detached.stdout.strip()
    assert task_id and "accepted by a" in detached.stderr
    assert time.monotonic() - started < TOKENS / 20, "it returned before the task could have finished"
    done = wait_until(lambda: (r := _result(zmqllm_env, b.endpoint, task_id)) and r["state"] == "done" and r,
                      30, interval=0.3, what="the detached task to finish")
    assert done["text"] == _expected(b.endpoint)


def test_a_detached_task_survives_its_origin_dying(trio, zmqllm_env) -> None:
    """Fails on the code before this change: the task died with a (its executor stopped when a was lost) and
    only a's journal, gone with a, knew of it."""
    a, b, c = trio
    detached = run_cli(zmqllm_env, "submit", PROMPT, "--max-tokens", str(TOKENS), "--temperature", "0",
                       "--detach", "--json", "--connect", a.endpoint, timeout=30)
    assert detached.returncode == 0, detached.stderr
    accepted = json.loads(detached.stdout)
    assert accepted["type"] == "accepted" and accepted["origin"] == "a"
    task_id = accepted["task_id"]
    wait_until(lambda: (r := _result(zmqllm_env, b.endpoint, task_id)) and r["tokens"] >= 5, 15, interval=0.2,
               what="the task to be streaming")
    a.kill()
    done = wait_until(lambda: (r := _result(zmqllm_env, c.endpoint, task_id)) and r["state"] == "done" and r,
                      30, interval=0.3, what="the adopted task to finish")
    assert done["text"] == _expected(b.endpoint)
    for node in (b, c):  # the same answer from either survivor
        assert _result(zmqllm_env, node.endpoint, task_id)["text"] == done["text"]

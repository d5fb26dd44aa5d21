"""Any node answers for any task: cancel, result and run --attach through a node other than the one holding it,
on real daemons over real sockets (echo engine)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from conftest import run_cli, states, wait_until

from zmqllm.client import AsyncClient, Client, RequestFailed
from zmqllm.core import protocol

SLOW_STEPS = """
name = "slow"
[[steps]]
name = "only"
prompt = "slow words {input}"
max_tokens = 60
"""


@pytest.fixture
def pair(spawn: Any) -> tuple[Any, Any]:
    a = spawn("a", "--echo-rate", "20")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "20")
    wait_until(lambda: list(states(a).values()) == ["alive"] * 2 and len(states(b)) == 2, 5, what="mesh")
    return a, b


def _stream_in_background(endpoint: str, task_id: str, max_tokens: int, **kwargs: Any
                          ) -> tuple[threading.Thread, list[dict[str, Any]], threading.Event]:
    """A client streaming one task from `endpoint`; the event is set at its first token."""
    events: list[dict[str, Any]] = []
    first = threading.Event()

    async def run() -> None:
        async with AsyncClient(endpoint, timeout=15) as client:
            async for event in client.submit("cancel me from elsewhere", max_tokens=max_tokens, task_id=task_id,
                                             **kwargs):
                events.append(event)
                if event["type"] == "token":
                    first.set()

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    return thread, events, first


def _run_in_background(endpoint: str, run_id: str, input: str
                       ) -> tuple[threading.Thread, list[dict[str, Any]], threading.Event]:
    """A client following a run of SLOW_STEPS on `endpoint`; the event is set once a step started."""
    events: list[dict[str, Any]] = []
    began = threading.Event()

    async def run() -> None:
        async with AsyncClient(endpoint, timeout=15) as client:
            async for event in client.run(SLOW_STEPS, input, run_id=run_id):
                events.append(event)
                if event["type"] == "task":
                    began.set()

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    return thread, events, began


def test_zmqllm_cancel_through_another_node_ends_the_task_cancelled(pair, zmqllm_env) -> None:
    """Fails on the code before this change: b answered `task_unknown` and the task ran to its end."""
    a, b = pair
    thread, events, first = _stream_in_background(a.endpoint, "far-away", 200, peer="a")
    assert first.wait(10), events
    started = time.monotonic()
    cancelled = run_cli(zmqllm_env, "cancel", "far-away", "--connect", b.endpoint, "--json", timeout=30)
    assert cancelled.returncode == 0, cancelled.stderr
    reply = json.loads(cancelled.stdout)
    assert reply["type"] == "done" and reply["finish_reason"] == "cancelled", reply
    thread.join(15)
    assert not thread.is_alive()
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "cancelled", events[-1]
    tokens = [e for e in events if e["type"] == "token"]
    assert len(tokens) < 100, "200 tokens at 20/s take 10 s: the cancel came long before"
    assert time.monotonic() - started < 8


def test_zmqllm_cancel_on_the_origin_itself_answers_with_the_ending(pair, zmqllm_env) -> None:
    """Fails on the code before this change: the origin's DONE did not answer the CANCEL (no `re`), so
    `zmqllm cancel` waited out its whole timeout and said the mesh was unreachable."""
    a, _ = pair
    thread, events, first = _stream_in_background(a.endpoint, "right-here", 200)
    assert first.wait(10), events
    cancelled = run_cli(zmqllm_env, "cancel", "right-here", "--connect", a.endpoint, "--timeout", "10", timeout=30)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == "right-here: cancelled"
    thread.join(15)
    assert events[-1]["finish_reason"] == "cancelled"


def test_zmqllm_result_through_another_node_prints_the_text(pair, zmqllm_env) -> None:
    a, b = pair
    with Client(a.endpoint, timeout=10) as client:
        done = [e for e in client.submit("alpha beta", max_tokens=5, task_id="made-on-a")][-1]
    assert done["type"] == "done"
    found = run_cli(zmqllm_env, "result", "made-on-a", "--connect", b.endpoint, timeout=30)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == done["text"].strip() and done["text"]
    as_json = json.loads(run_cli(zmqllm_env, "result", "made-on-a", "--connect", b.endpoint, "--json").stdout)
    assert as_json["task_id"] == "made-on-a" and as_json["state"] == "done"


def test_an_id_no_node_holds_is_unknown_quickly_everywhere(pair, zmqllm_env) -> None:
    _, b = pair
    started = time.monotonic()
    missing = run_cli(zmqllm_env, "result", "nobody-has-it", "--connect", b.endpoint, timeout=30)
    assert missing.returncode == 1
    assert "task_unknown" in missing.stderr and "live peers" in missing.stderr, missing.stderr
    cancel = run_cli(zmqllm_env, "cancel", "nobody-has-it", "--connect", b.endpoint, timeout=30)
    assert cancel.returncode == 1 and "task_unknown" in cancel.stderr, cancel.stderr
    assert time.monotonic() - started < 10  # every peer answered: no lookup waited out its bound


def test_run_attach_through_another_node_follows_the_run_to_its_end(pair, zmqllm_env) -> None:
    a, b = pair
    thread, events, began = _run_in_background(a.endpoint, "far-run", "x")
    assert began.wait(10), events
    attached = run_cli(zmqllm_env, "run", "--attach", "far-run", "--json", "--connect", b.endpoint, timeout=60)
    thread.join(30)
    assert attached.returncode == 0, attached.stderr
    lines = [json.loads(line) for line in attached.stdout.splitlines()]
    assert lines[0]["type"] == "run" and lines[0]["orchestrator"] == "a" and lines[0]["attached"], lines[0]
    assert lines[-1]["type"] == "done" and lines[-1]["state"] == "done", lines[-1]
    assert lines[-1]["output"] == events[-1]["output"]


def test_cancel_run_through_another_node_cancels_it(pair) -> None:
    a, b = pair
    thread, events, began = _run_in_background(a.endpoint, "stop-run", "y")
    assert began.wait(10), events

    async def cancel_via_b() -> None:
        async with AsyncClient(b.endpoint, timeout=10) as client:
            await client.cancel_run("stop-run")
            await client.status()

    asyncio.run(cancel_via_b())
    thread.join(15)
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "cancelled", events[-1]


def test_a_client_may_not_send_lookup(pair) -> None:
    """LOOKUP is a node's question to a peer: from a client connection it is refused, and answers nothing."""
    a, _ = pair

    async def ask() -> None:
        async with AsyncClient(a.endpoint, timeout=5) as client:
            await client.request("LOOKUP", kind="task", key="anything")

    with pytest.raises(RequestFailed) as refused:
        asyncio.run(ask())
    assert refused.value.code == "not_allowed"


def test_forwarded_requests_are_answered_locally_never_forwarded_again() -> None:
    """The `local` flag a forwarding node sets is part of the protocol of every forwardable request."""
    for type_, fields in (("CANCEL", {"task_id": "t"}), ("GET_RESULT", {"task_id": "t"}),
                          ("RUN", {"run_id": "r", "attach": True}), ("CANCEL_RUN", {"run_id": "r"})):
        message = protocol.make(type_, **fields, local=True)
        assert protocol.decode(protocol.encode(message)).get("local") is True

"""A client whose origin dies mid-stream takes its task to another node and sees every token once, in order,
with the text an uninterrupted run gives (CONTRACT: any node answers for any task). Real daemons, SIGKILL."""

from __future__ import annotations

import pytest

from conftest import Daemon, alive_names, wait_until
from zmqllm.client import Client, RequestFailed


def stream_killing(origin: Daemon, victim: Daemon, after: int, **submit) -> list[dict]:
    """Submit through `origin`, SIGKILL `victim` once `after` tokens have arrived; every event of the stream."""
    events = []
    with Client(origin.endpoint, timeout=5) as client:
        for event in client.submit(**submit):
            events.append(event)
            if event["type"] == "token" and event["seq"] == after - 1:
                victim.kill()
    return events


def test_a_stream_survives_its_origin_being_killed(spawn):
    a = spawn("a", "--echo-rate", "50", heartbeat=0.2)
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "50", heartbeat=0.2)
    spawn("c", "--peer", a.endpoint, "--echo-rate", "50", heartbeat=0.2)
    wait_until(lambda: alive_names(a) == {"a", "b", "c"}, 10, what="a sees b and c")
    events = stream_killing(a, a, 20, prompt="one two three four", max_tokens=200, peer="b")
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["seq"] for t in tokens] == list(range(200))  # every token once, in order
    assert "".join(t["text"] for t in tokens) == "one two three four " * 50
    moves = [e for e in events if e["type"] == "failover"]
    assert len(moves) == 1 and moves[0]["kind"] == "origin" and moves[0]["at_seq"] == 20
    assert moves[0]["from"] == a.endpoint and moves[0]["to"] != a.endpoint
    done = events[-1]
    assert done["type"] == "done" and done["finish_reason"] == "length"
    assert done["text"] == "one two three four " * 50 and done["usage"]["completion_tokens"] == 200


def test_a_new_origin_refuses_a_resume_that_does_not_fit_the_task(spawn):
    a = spawn("a")
    with Client(a.endpoint) as client, pytest.raises(RequestFailed, match="start_seq"):
        client._loop.run_until_complete(client._async.request(
            "SUBMIT", task_id="t", prompt="x", max_tokens=4, params={}, stop=[], resume_ids=[1, 2], start_seq=3))


@pytest.mark.llama
def test_a_greedy_llama_stream_survives_its_origin_with_the_uninterrupted_text(spawn):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
    llama = ("--model", "bundled:gemma3-270m", "--threads", "1", "--slots", "1")
    a = spawn("la", *llama, engine="llama", heartbeat=0.2)
    b = spawn("lb", "--peer", a.endpoint, *llama, engine="llama", heartbeat=0.2)
    wait_until(lambda: alive_names(a) == {"la", "lb"}, 20, what="la sees lb")
    request = dict(prompt="The history of the city of Paris", max_tokens=200, params={"temperature": 0.0},
                   peer="lb")
    with Client(b.endpoint, timeout=30) as client:
        expected = [e for e in client.submit(**request)][-1]
    assert expected["type"] == "done"
    events = stream_killing(a, a, 20, **request)
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["seq"] for t in tokens] == list(range(len(tokens)))
    assert [e["kind"] for e in events if e["type"] == "failover"] == ["origin"]
    assert "".join(t["text"] for t in tokens) == expected["text"] == events[-1]["text"]
    assert events[-1]["usage"]["completion_tokens"] == expected["usage"]["completion_tokens"]


def _two_nodes(spawn) -> tuple[Daemon, Daemon]:
    """a and b, echo at 50 tokens/s, heartbeat 0.2 s, each seeing the other alive."""
    a = spawn("a", "--echo-rate", "50", heartbeat=0.2)
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "50", heartbeat=0.2)
    wait_until(lambda: alive_names(a) == {"a", "b"} and alive_names(b) == {"a", "b"}, 10, what="a and b meet")
    return a, b


def test_a_client_moving_back_to_an_origin_it_left_continues_its_task(spawn):
    """Fails on the code before this change: a (frozen, then thawed) saw its client gone and cancelled the task;
    when the client came back to a (b froze in turn), a replayed that cancel: a `done` `cancelled` the user never
    asked for, and the tokens after the first move were lost."""
    import asyncio
    import signal

    from zmqllm.client import AsyncClient

    a, b = _two_nodes(spawn)

    async def run() -> list[dict]:
        events = []
        async with AsyncClient(a.endpoint, timeout=1.0) as client:
            client.endpoints = [a.endpoint, b.endpoint]
            async for event in client.submit("one two three", max_tokens=120):
                events.append(event)
                if event["type"] == "token" and event["seq"] == 10:
                    a.proc.send_signal(signal.SIGSTOP)  # the origin freezes: the client leaves it for b
                if event["type"] == "failover" and event["to"] == b.endpoint:
                    a.proc.send_signal(signal.SIGCONT)  # a thaws and finds its client gone...
                    await asyncio.sleep(0.5)
                    b.proc.send_signal(signal.SIGSTOP)  # ...and the client must come back to it
        return events

    try:
        events = asyncio.run(run())
    finally:
        for node in (a, b):
            node.proc.send_signal(signal.SIGCONT)
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["seq"] for t in tokens] == list(range(120)), [e for e in events if e["type"] != "token"]
    assert "".join(t["text"] for t in tokens) == "one two three " * 40
    assert [e["to"] for e in events if e["type"] == "failover"] == [b.endpoint, a.endpoint]
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "length", events[-1]


def test_a_client_coming_back_to_its_restarted_origin_continues_the_interrupted_task(spawn):
    """Fails on the code before this change: the restarted a found the task `interrupted` in its journal and
    replayed that error, although the client held 11 tokens and only wanted the rest."""
    import asyncio
    import signal

    from zmqllm.client import AsyncClient

    a, b = _two_nodes(spawn)
    restarted: list[Daemon] = []

    async def run() -> list[dict]:
        events = []
        async with AsyncClient(a.endpoint, timeout=1.0) as client:
            client.endpoints = [a.endpoint, b.endpoint]
            async for event in client.submit("one two three", max_tokens=120):
                events.append(event)
                if event["type"] == "token" and event["seq"] == 10 and not restarted:
                    a.kill()  # the origin dies: the client moves to b
                if event["type"] == "failover" and event["to"] == b.endpoint:
                    restarted.append(spawn("a", "--echo-rate", "50", "--peer", b.endpoint, heartbeat=0.2,
                                           bind=a.endpoint))
                    b.proc.send_signal(signal.SIGSTOP)  # ...and the client must go back to the restarted a
        return events

    try:
        events = asyncio.run(run())
    finally:
        b.proc.send_signal(signal.SIGCONT)
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["seq"] for t in tokens] == list(range(120)), [e for e in events if e["type"] != "token"]
    assert "".join(t["text"] for t in tokens) == "one two three " * 40
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "length", events[-1]

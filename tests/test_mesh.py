"""The mesh on real daemon processes over real sockets (echo engine)."""

from __future__ import annotations

import asyncio
import json
import time

from conftest import run_cli, states, wait_until

from zmqllm.client import AsyncClient
from zmqllm.engines.echo import echo_tokens


def test_three_nodes_learn_the_whole_mesh_from_one_seed(spawn, zmqllm_env):
    interval = 0.5
    a = spawn("a", heartbeat=interval)
    b = spawn("b", "--peer", a.endpoint, heartbeat=interval)
    c = spawn("c", "--peer", b.endpoint, heartbeat=interval)  # c is told only of b
    everyone_alive = {"a": "alive", "b": "alive", "c": "alive"}
    for node in (a, b, c):
        wait_until(lambda: states(node) == everyone_alive, timeout=3 * interval, what=f"{node.name} to see all alive")
    # the CLI shows the same, as JSON rows per the contract
    result = run_cli(zmqllm_env, "peers", "--connect", c.endpoint, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert sorted(r["name"] for r in rows) == ["a", "b", "c"]
    assert [r["self"] for r in rows if r["name"] == "c"] == [True]
    assert {r["name"]: r["endpoint"] for r in rows} == {"a": a.endpoint, "b": b.endpoint, "c": c.endpoint}
    assert all(r["models"] == ["echo"] and r["slots"]["total"] == 4 for r in rows)


def test_pinned_task_runs_on_that_peer_and_streams_every_token_once_in_order(spawn, zmqllm_env):
    a = spawn("a")
    b = spawn("b", "--peer", a.endpoint)
    c = spawn("c", "--peer", a.endpoint)
    wait_until(lambda: set(states(a).values()) == {"alive"} and len(states(a)) == 3, 5, what="mesh")
    prompt = "the quick brown fox jumps"
    result = run_cli(zmqllm_env, "submit", prompt, "--peer", "c", "--max-tokens", "23", "--json",
                     "--connect", a.endpoint)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "accepted" and events[0]["origin"] == "a"
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["seq"] for t in tokens] == list(range(23))
    words = echo_tokens(prompt)
    assert [t["text"] for t in tokens] == [words[i % len(words)] for i in range(23)]
    done = events[-1]
    assert done["type"] == "done" and done["executed_by"] == "c" and done["executed_on"] == ["c"]
    assert done["finish_reason"] == "length" and done["usage"]["completion_tokens"] == 23
    assert done["text"] == "".join(t["text"] for t in tokens)
    assert b.proc.poll() is None


def test_twenty_concurrent_tasks_all_complete_on_more_than_one_node(spawn):
    a = spawn("a", "--echo-rate", "200")
    spawn("b", "--peer", a.endpoint, "--echo-rate", "200")
    spawn("c", "--peer", a.endpoint, "--echo-rate", "200")
    wait_until(lambda: list(states(a).values()) == ["alive"] * 3, 5, what="mesh")

    async def one(client: AsyncClient, i: int) -> dict:
        events = [e async for e in client.submit(f"task {i} says hello", max_tokens=30)]
        seqs = [e["seq"] for e in events if e["type"] == "token"]
        assert seqs == list(range(30)), f"task {i}: {seqs}"
        return events[-1]

    async def run_all() -> list[dict]:
        async with AsyncClient(a.endpoint, timeout=10) as client:
            return await asyncio.gather(*(one(client, i) for i in range(20)))

    finals = asyncio.run(run_all())
    assert all(f["type"] == "done" and f["finish_reason"] == "length" for f in finals), finals
    executors = {f["executed_by"] for f in finals}
    assert len(executors) > 1, executors


def test_killed_peer_is_declared_dead_in_time_and_rejoins_after_restart(spawn):
    interval, dead_after = 0.2, 4
    a = spawn("a", heartbeat=interval)
    b = spawn("b", "--peer", a.endpoint, heartbeat=interval)
    c = spawn("c", "--peer", a.endpoint, heartbeat=interval)
    wait_until(lambda: list(states(b).values()) == ["alive"] * 3, 5, what="mesh")
    port_endpoint = c.endpoint
    c.kill()
    killed_at = time.monotonic()
    bound = interval * dead_after + interval
    for watcher in (a, b):
        wait_until(lambda: states(watcher)["c"] == "dead", timeout=bound + 1, interval=0.01,
                   what=f"{watcher.name} to mark c dead")
    # both watchers polled in turn: the slower one bounds the detection time
    detected = time.monotonic() - killed_at
    assert detected <= bound + 0.15, f"dead after {detected:.3f}s, bound {bound}s"
    # restart c at the same address, seeded with a only
    c2 = spawn("c", "--peer", a.endpoint, heartbeat=interval, bind=port_endpoint)
    for watcher in (a, b):
        wait_until(lambda: states(watcher)["c"] == "alive", timeout=3 * interval, interval=0.01,
                   what=f"{watcher.name} to see c alive again")
    with c2.client() as client:
        rows = client.peers()
    assert {r["name"]: r["state"] for r in rows} == {"a": "alive", "b": "alive", "c": "alive"}
    # the restarted node has a new id and replaced its old row (one row per name)
    with a.client() as client:
        c_rows = [r for r in client.peers() if r["name"] == "c"]
    assert len(c_rows) == 1 and c_rows[0]["node_id"] == c2.ready_event["node_id"]


def test_seed_node_restarted_without_peers_is_found_again(spawn):
    """A node with no seeds of its own (the usual first node) learns the mesh back
    from the heartbeats and greetings of the nodes that knew it."""
    interval = 0.2
    a = spawn("a", heartbeat=interval)
    b = spawn("b", "--peer", a.endpoint, heartbeat=interval)
    wait_until(lambda: list(states(b).values()) == ["alive"] * 2, 5, what="mesh")
    endpoint = a.endpoint
    a.kill()
    wait_until(lambda: states(b)["a"] == "dead", 3, what="a dead")
    a2 = spawn("a", heartbeat=interval, bind=endpoint)
    wait_until(lambda: states(a2).get("b") == "alive", 3 * interval, interval=0.01, what="a2 to learn b")
    wait_until(lambda: states(b)["a"] == "alive", 3 * interval, interval=0.01, what="b to see a again")


def test_sigterm_says_bye_and_peers_mark_it_left(spawn):
    a = spawn("a", heartbeat=1.0)
    b = spawn("b", "--peer", a.endpoint, heartbeat=1.0)
    wait_until(lambda: states(a).get("b") == "alive", 5, what="mesh")
    assert b.stop() == 0
    # far sooner than dead detection (4 s at this interval)
    wait_until(lambda: states(a)["b"] == "left", timeout=1.0, what="a to mark b left")


def test_second_daemon_with_a_live_name_is_refused(spawn, tmp_path):
    a = spawn("a")
    spawn("b", "--peer", a.endpoint)
    wait_until(lambda: states(a).get("b") == "alive", 5, what="mesh")
    impostor = spawn("b", "--peer", a.endpoint, "--data-dir", str(tmp_path / "other-b"), wait=False)
    assert impostor.proc.wait(15) != 0
    assert any("name 'b' is already used" in line for line in impostor.log_lines), impostor.log()
    assert states(a)["b"] == "alive"


def test_task_errors_name_the_problem(spawn, zmqllm_env):
    a = spawn("a")
    spawn("b", "--peer", a.endpoint)
    wait_until(lambda: len(states(a)) == 2, 5, what="mesh")
    cases = [
        (["--peer", "zed"], "peer_unknown", "zed"),
        (["--model", "gpt-9"], "no_peer_for_model", "gpt-9"),
        (["--temperature", "0.5", "--max-tokens", "0"], None, None),  # click refuses: usage error
    ]
    for extra, code, mentioned in cases:
        result = run_cli(zmqllm_env, "submit", "hello", "--json", "--connect", a.endpoint, *extra)
        if code is None:
            assert result.returncode == 2, result
            continue
        assert result.returncode == 1, result
        last = json.loads(result.stdout.splitlines()[-1])
        assert last["type"] == "error" and last["code"] == code and mentioned in last["message"]
        assert result.stderr.strip().count("\n") == 0 and code in result.stderr


def test_unreachable_endpoint_exits_3_quickly(zmqllm_env, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = run_cli(zmqllm_env, "peers", "--connect", f"tcp://127.0.0.1:{port}", "--timeout", "0.5")
    assert result.returncode == 3
    assert f"tcp://127.0.0.1:{port}" in result.stderr and result.stderr.strip().count("\n") == 0
    assert time.monotonic() - started < 10


def test_chat_and_models_on_an_echo_mesh(spawn, zmqllm_env):
    a = spawn("a")
    spawn("b", "--peer", a.endpoint)
    wait_until(lambda: len(states(a)) == 2, 5, what="mesh")
    result = run_cli(zmqllm_env, "chat", "hello mesh", "--system", "ignored", "--max-tokens", "3", "--json",
                     "--connect", a.endpoint)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["text"] == "hello mesh hello "
    result = run_cli(zmqllm_env, "models", "--json", "--connect", a.endpoint)
    assert json.loads(result.stdout) == [{"model": "echo", "peers": ["a", "b"], "loaded_on": ["a", "b"],
                                          "loading_on": [], "ctx": 0, "slots": 8, "busy": 0, "chat": True}]
    bad = run_cli(zmqllm_env, "chat", "hi", "--connect", a.endpoint, "--json", "--max-tokens", "2",
                  "--task-id", "x" * 200)
    assert bad.returncode == 1 and "task_id" in bad.stderr


def test_a_client_that_goes_away_has_its_task_cancelled_on_the_executor(spawn):
    a = spawn("a")
    b = spawn("b", "--peer", a.endpoint)
    wait_until(lambda: states(a).get("b") == "alive", 5, what="mesh")

    async def start_and_vanish() -> None:
        async with AsyncClient(a.endpoint, timeout=5) as client:
            async for event in client.submit("never ending story", peer="b", max_tokens=100_000):
                if event["type"] == "token" and event["seq"] == 3:
                    break  # the client closes its socket without cancelling

    asyncio.run(start_and_vanish())

    def executor_idle() -> bool:
        with b.client() as client:
            tasks = client.status()["tasks"]
        return tasks["running"] == 0 and tasks["done"] == 1

    wait_until(executor_idle, 3, interval=0.05, what="b to stop the abandoned task")


def _failover_run(spawn, kill: str, *, failover: bool = True, tokens: int = 200) -> tuple[list[dict], float]:
    """Stream `tokens` echo tokens from b through origin a, with c standing by; after
    ~30 % of them, `kill` ("SIGKILL" or "SIGTERM") the executor b."""
    import signal as signals

    interval = 0.2
    a = spawn("a", "--echo-rate", "100", heartbeat=interval)
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "100", heartbeat=interval)
    spawn("c", "--peer", a.endpoint, "--echo-rate", "100", heartbeat=interval)
    wait_until(lambda: list(states(a).values()) == ["alive"] * 3, 5, what="mesh")

    async def run() -> tuple[list[dict], float]:
        events, killed_at, resumed_after = [], 0.0, 0.0
        async with AsyncClient(a.endpoint, timeout=10) as client:
            async for event in client.submit("one two three four five", peer="b", max_tokens=tokens,
                                             failover=failover):
                events.append(event)
                if event["type"] == "token" and event["seq"] == int(tokens * 0.3):
                    b.proc.send_signal(getattr(signals, kill))
                    killed_at = time.monotonic()
                if event["type"] == "token" and killed_at and not resumed_after and any(
                        e["type"] == "failover" for e in events):
                    resumed_after = time.monotonic() - killed_at
        return events, resumed_after

    return asyncio.run(run())


def test_sigkilled_executor_fails_over_and_every_token_arrives_once_in_order(spawn):
    events, resumed_after = _failover_run(spawn, "SIGKILL")
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["seq"] for t in tokens] == list(range(200))
    words = echo_tokens("one two three four five")
    assert [t["text"] for t in tokens] == [words[i % 5] for i in range(200)]
    failovers = [e for e in events if e["type"] == "failover"]
    assert len(failovers) == 1 and failovers[0]["from"] == "b" and failovers[0]["to"] in ("a", "c")
    done = events[-1]
    assert done["type"] == "done" and done["executed_on"] == ["b", failovers[0]["to"]]
    assert done["usage"]["completion_tokens"] == 200 and done["text"] == "".join(t["text"] for t in tokens)
    # the killed process's TCP connection closes at once: no waiting for 4 silent heartbeat intervals (0.8 s)
    assert failovers[0]["reason"] == "executor b is unreachable (connection closed)", failovers[0]
    assert resumed_after < 0.2 * 4, f"resumed {resumed_after:.2f}s after the kill"


def test_executor_stopped_with_sigterm_hands_over_at_once(spawn):
    events, resumed_after = _failover_run(spawn, "SIGTERM")
    assert [t["seq"] for t in events if t["type"] == "token"] == list(range(200))
    assert [e["reason"] for e in events if e["type"] == "failover"] == ["executor b stopped"]
    assert resumed_after < 0.5, f"resumed {resumed_after:.2f}s after SIGTERM"


def test_no_failover_ends_the_task_with_peer_dead(spawn):
    events, _ = _failover_run(spawn, "SIGKILL", failover=False)
    assert not [e for e in events if e["type"] == "failover"]
    assert events[-1]["type"] == "error" and events[-1]["code"] == "peer_dead"


def test_a_deadline_cancels_the_task_on_its_executor(spawn, zmqllm_env):
    a = spawn("a")
    b = spawn("b", "--peer", a.endpoint)
    wait_until(lambda: states(a).get("b") == "alive", 5, what="mesh")
    started = time.monotonic()
    result = run_cli(zmqllm_env, "submit", "tick tock", "--peer", "b", "--max-tokens", "10000", "--deadline", "0.5",
                     "--json", "--connect", a.endpoint)
    assert result.returncode == 1
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["type"] == "error" and last["code"] == "deadline" and "0.5 s deadline" in last["message"]
    assert time.monotonic() - started < 5

    def b_idle() -> bool:
        with b.client() as client:
            return client.status()["tasks"]["running"] == 0

    wait_until(b_idle, 2, what="b to stop the expired task")


def test_a_frozen_executor_is_declared_dead_its_task_resumes_and_its_late_tokens_are_ignored(spawn):
    import signal as signals

    interval = 0.2
    a = spawn("a", "--echo-rate", "50", heartbeat=interval)
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "50", heartbeat=interval)
    c = spawn("c", "--peer", a.endpoint, "--echo-rate", "50", heartbeat=interval)
    wait_until(lambda: list(states(a).values()) == ["alive"] * 3, 5, what="mesh")

    async def run() -> list[dict]:
        events = []
        async with AsyncClient(a.endpoint, timeout=10) as client:
            async for event in client.submit("frozen in time", peer="b", max_tokens=120):
                events.append(event)
                if event["type"] == "token" and event["seq"] == 20:
                    b.proc.send_signal(signals.SIGSTOP)
                if event["type"] == "failover":
                    b.proc.send_signal(signals.SIGCONT)  # thawed: it still has tokens to send
        return events

    try:
        events = asyncio.run(run())
    finally:
        b.proc.send_signal(signals.SIGCONT)
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["seq"] for t in tokens] == list(range(120))
    failovers = [e for e in events if e["type"] == "failover"]
    assert len(failovers) == 1 and failovers[0]["from"] == "b" and failovers[0]["to"] in ("a", "c")
    assert events[-1]["type"] == "done" and events[-1]["usage"]["completion_tokens"] == 120
    wait_until(lambda: states(a)["b"] == "alive", 3, what="b back after SIGCONT")

    def b_stopped_the_task() -> bool:
        with b.client() as client:
            return client.status()["tasks"]["running"] == 0

    wait_until(b_stopped_the_task, 3, what="the thawed b to be told to stop")
    assert c.proc.poll() is None


def test_a_full_node_rejects_as_busy_and_the_origin_routes_elsewhere_or_says_why(spawn):
    """b and c report their load every 30 s only, so origin a believes b idle when it is not: b answers
    REJECT busy and a places the task on c. With every node full the task ends `busy`, never silently."""
    full_at_one = ("--slots", "1", "--queue-limit", "0", "--echo-rate", "20")
    a = spawn("a", *full_at_one, "--suspect-after", "150", "--dead-after", "300", heartbeat=0.2)
    b = spawn("b", "--peer", a.endpoint, *full_at_one, heartbeat=30)
    spawn("c", "--peer", a.endpoint, *full_at_one, heartbeat=30)
    wait_until(lambda: states(a) == {"a": "alive", "b": "alive", "c": "alive"}, 5, what="mesh")

    async def run() -> tuple[list[dict], list[dict]]:
        async with AsyncClient(a.endpoint) as via_a, AsyncClient(b.endpoint) as via_b:
            streams = [via_b.submit("on b", max_tokens=500), via_a.submit("on a", max_tokens=500)]
            for stream in streams:  # b and a each run their own client's task (ties go to the origin)
                assert [(await stream.__anext__())["type"] for _ in range(2)] == ["accepted", "token"]
            rerouted = via_a.submit("to c", max_tokens=500)
            opening = [await rerouted.__anext__() for _ in range(2)]
            refused = [event async for event in via_a.submit("nowhere", max_tokens=5)]
            await via_a.cancel(opening[0]["task_id"])
            return opening + [event async for event in rerouted], refused

    rerouted, refused = asyncio.run(run())
    assert [e["type"] for e in rerouted[:2]] == ["accepted", "token"], rerouted[-3:]
    done = rerouted[-1]
    assert done["type"] == "done" and done["finish_reason"] == "cancelled" and done["executed_on"] == ["c"], done
    assert any("rejected by b" in line for line in a.log_lines), a.log()
    assert refused[-1]["type"] == "error" and refused[-1]["code"] == "busy", refused
    assert "every node serving the model refused" in refused[-1]["message"]

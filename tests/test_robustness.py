"""Bad input at a real daemon's socket and in config: clear errors, nothing lost, daemon stays up."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import msgpack
import pytest
import zmq
from conftest import process_gone, run_cli, sigint_as_usual, states, wait_until

from zmqllm.core import protocol
from zmqllm.client import AsyncClient

RECV_TIMEOUT_MS = 5000


def _raw_dealer(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return ctx, sock


def _body(**overrides: object) -> dict:
    body = {"v": protocol.PROTOCOL_VERSION, "t": "GET_STATUS", "id": 7, "src": "tester"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


BAD_FRAMES = [
    (b"\x00garbage\xff\xfe", "malformed", None),
    (msgpack.packb(_body(t="SUBMIT", task_id="t", prompt="hello", max_tokens=5, params={}, stop=[]))[:-6],
     "malformed", None),
    (msgpack.packb(_body(t="LAUNCH_MISSILES")), "unknown_type", "LAUNCH_MISSILES"),
    (msgpack.packb(_body(v=99)), "protocol_version", "99"),
    (msgpack.packb(_body(t="SUBMIT", task_id="t", prompt=5, max_tokens=5, params={}, stop=[])), "bad_request",
     "prompt"),
    (msgpack.packb([1, 2, 3]), "malformed", None),
    (b"\x92" + msgpack.packb(_body()), "malformed", None),  # a batch missing its second message
]


def test_garbage_truncated_unknown_and_wrong_version_frames_get_errors_and_the_daemon_stays_up(spawn):
    a = spawn("a")
    ctx, sock = _raw_dealer(a.endpoint)
    try:
        for frame, code, mentioned in BAD_FRAMES:
            sock.send(frame)
            reply = protocol.decode(sock.recv())
            assert reply.type == "ERROR" and reply["code"] == code, (frame, reply)
            if mentioned:
                assert mentioned in reply["message"]
        sock.send_multipart([b"", b"two", b"frames"])  # a frame shape no client sends
        assert protocol.decode(sock.recv())["code"] == "malformed"
        # the reply names the offending message id where it could be read
        sock.send(msgpack.packb(_body(v=2, id=4242)))
        assert protocol.decode(sock.recv()).re == 4242
        # a batch of valid requests is answered in full (the replies come batched too)
        batch = protocol.batch_frame([protocol.encode(protocol.make("GET_STATUS", src="t", id=i)) for i in (1, 2)])
        sock.send(batch)
        assert [m.re for m in protocol.decode_frame(sock.recv())] == [1, 2]
    finally:
        ctx.destroy(linger=0)
    # not ZMTP at all: raw bytes on the TCP port
    host, port = a.endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
    assert a.proc.poll() is None
    with a.client() as client:
        assert client.status()["name"] == "a"
        assert client.status()["dropped_frames"] >= len(BAD_FRAMES)


def test_a_burst_through_a_peer_arrives_whole_and_in_order(spawn):
    """Unlimited-rate echo: thousands of tokens in a burst, relayed by the origin."""
    a = spawn("a", "--echo-rate", "0")
    spawn("b", "--peer", a.endpoint, "--echo-rate", "0")
    wait_until(lambda: states(a).get("b") == "alive", 5, what="mesh")

    async def run() -> list[dict]:
        async with AsyncClient(a.endpoint, timeout=10) as client:
            return [e async for e in client.submit("one two three", max_tokens=5000, peer="b")]

    events = asyncio.run(run())
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["seq"] for t in tokens] == list(range(5000))
    assert events[-1]["type"] == "done" and events[-1]["usage"]["completion_tokens"] == 5000
    assert "".join(t["text"] for t in tokens) == "one two three " * 1666 + "one two "


@pytest.mark.parametrize(
    "content, expected",
    [
        ('heartbeat_intervl = 0.2\n', "unknown key 'heartbeat_intervl' (did you mean 'heartbeat_interval'?)"),
        ('slots = "four"\n', "key 'slots' must be an integer"),
        ('peers = "tcp://x:1"\n', "key 'peers' must be a list of strings"),
        ('name = [\n', "invalid TOML"),
    ],
)
def test_bad_config_file_exits_2_with_one_line_naming_key_and_file(zmqllm_env, tmp_path, content, expected):
    path = tmp_path / "node.toml"
    path.write_text(content)
    result = run_cli(zmqllm_env, "daemon", "--config", str(path), timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], result.stderr


def test_unreadable_config_and_bad_env_exit_2(zmqllm_env, tmp_path):
    result = run_cli(zmqllm_env, "daemon", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr and "missing.toml" in result.stderr
    env = dict(zmqllm_env, ZMQLLM_HEARTBEAT_INTERVAL="fast")
    result = run_cli(env, "daemon", "--name", "x")
    assert result.returncode == 2 and "ZMQLLM_HEARTBEAT_INTERVAL" in result.stderr, result.stderr


def test_config_file_flags_and_env_combine(spawn, zmqllm_env, tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('name = "from-file"\nslots = 3\necho_rate = 100.0\n')
    env = dict(zmqllm_env, ZMQLLM_SLOTS="5")
    d = spawn("from-flag", "--config", str(path), env=env)
    with d.client() as client:
        status = client.status()
    assert status["name"] == "from-flag" and status["slots"] == 5  # flag > env > file


def test_up_starts_a_mesh_clients_find_it_and_ctrl_c_leaves_no_daemon(zmqllm_env, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "zmqllm").mkdir()  # run from a folder holding one named zmqllm (a checkout's parent): its
    # daemons must still import the installed package, not that folder
    proc = subprocess.Popen([sys.executable, "-P", "-m", "zmqllm", "up", "--nodes", "3", "--engine", "echo", "--json",
                             "--heartbeat-interval", "0.2", "--no-http"], env=zmqllm_env, stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        assert proc.stdout is not None
        records = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "zmqllm up ended early"
            records.append(json.loads(line))
            if records[-1]["type"] == "ready":
                break
        pids = [r["pid"] for r in records if r["type"] == "node"]
        assert len(pids) == 3
        # no --connect: client commands find the mesh through the state file
        def all_alive() -> bool:
            result = run_cli(zmqllm_env, "peers", "--json")
            rows = json.loads(result.stdout) if result.returncode == 0 else []
            return len(rows) == 3 and all(r["state"] == "alive" for r in rows)

        wait_until(all_alive, 10, interval=0.1, what="3 alive peers through the state file")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in pids:
        wait_until(lambda: process_gone(pid), 10, what=f"daemon {pid} gone")
    result = run_cli(zmqllm_env, "peers", "--timeout", "0.3")
    assert result.returncode == 3  # the state file went with the mesh: nothing at the default endpoint


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_client_that_stops_reading_is_cut_off_without_slowing_others(spawn):
    """The stalled client's task ends (slow_client) once its bounded backlog is full;
    a second client's stream through the same origin keeps its full rate meanwhile."""
    import threading
    import time

    a = spawn("a", "--echo-rate", "0", "--send-buffer-mb", "1")
    spawn("b", "--peer", a.endpoint, "--echo-rate", "0")
    spawn("c", "--peer", a.endpoint, "--echo-rate", "50")
    wait_until(lambda: len(states(a)) == 3, 5, what="mesh")
    rss_before = _rss_mb(a.proc.pid)
    ctx, stalled = _raw_dealer(a.endpoint)
    stalled.setsockopt(zmq.RCVHWM, 10)
    try:
        stalled.send(protocol.encode(protocol.make("SUBMIT", src="stalled", id=1, task_id="flood", prompt="x y z",
                                                   max_tokens=1_000_000, params={}, stop=[], peer="b")))
        rates: list[float] = []

        def steady() -> None:
            async def run() -> None:
                async with AsyncClient(a.endpoint, timeout=10) as client:
                    started, count = time.monotonic(), 0
                    async for event in client.submit("steady pace", peer="c", max_tokens=100):
                        count += event["type"] == "token"
                    rates.append(count / (time.monotonic() - started))

            asyncio.run(run())

        worker = threading.Thread(target=steady)
        worker.start()

        def flood_ended() -> bool:
            with a.client() as client:
                return client.status()["tasks"]["routing"] == 0 and not worker.is_alive()

        wait_until(flood_ended, 30, interval=0.2, what="the flood to be cut off")
        worker.join(5)
        # bounded: the outbox (1 MiB here), 1000 queued frames of at most 256 tokens, and the output kept for
        # replay of what was generated before the cut-off (a few seconds at ~50 k tok/s)
        assert _rss_mb(a.proc.pid) - rss_before < 400
        assert rates and rates[0] > 35, f"the other client streamed at {rates} tok/s (50 nominal)"
    finally:
        ctx.destroy(linger=0)
    # what the stalled client finally reads: its tokens, then the error that says why
    with a.client() as client:
        result = client._loop.run_until_complete(client._async.request("GET_RESULT", task_id="flood"))
    assert result["task"]["state"] == "failed" and result["task"]["error"]["code"] == "slow_client", result


def test_ctrl_c_in_a_benchmark_exits_130_and_leaves_no_daemon(zmqllm_env):
    import signal
    import subprocess
    import sys

    def children(pid: int) -> list[int]:
        found = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
        return found

    proc = subprocess.Popen([sys.executable, "-m", "zmqllm", "bench", "failover"], env=zmqllm_env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_usual)
    try:
        daemons = wait_until(lambda: children(proc.pid), 30, interval=0.05, what="the benchmark's daemons")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "bench: interrupted" in err, err
        wait_until(lambda: all(process_gone(pid) for pid in daemons), 10, what="its daemons to be gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

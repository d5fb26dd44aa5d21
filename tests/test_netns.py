"""A real network partition: three daemons on three hosts (network namespaces joined
by veth pairs to a bridge in a fourth), one link cut mid-task, then healed.

Every address used here is created by the test inside its own namespaces; nothing
leaves them. Skipped, with the reason, where namespaces cannot be made (not root,
no iproute2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import Daemon, _pump, two_steps, wait_until
from zmqllm.net import keys

SUBNET = "10.231.7"
HEARTBEAT_S = 0.2


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _can_make_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"zq{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create network namespaces here ({exc})"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def hosts() -> Iterator[dict[str, str]]:
    """Namespaces z<pid>-a/b/c with addresses SUBNET.1-3, bridged in z<pid>-sw."""
    reason = _can_make_namespaces()
    if reason:
        pytest.skip(reason)
    tag = f"z{os.getpid() % 100000}"
    switch = f"{tag}-sw"
    names = {"a": 1, "b": 2, "c": 3}
    made = [switch]
    try:
        _ip("netns", "add", switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for name, host in names.items():
            ns = f"{tag}-{name}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", f"{tag}{name}h", "netns", ns, "type", "veth", "peer", "name", f"{tag}{name}s",
                "netns", switch)
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{host}/24", "dev", f"{tag}{name}h")
            _ip("-n", ns, "link", "set", f"{tag}{name}h", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", switch, "link", "set", f"{tag}{name}s", "master", "br0")
            _ip("-n", switch, "link", "set", f"{tag}{name}s", "up")
        yield {"tag": tag, "switch": switch}
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _in(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _daemon(env: dict[str, str], ns: str, name: str, host: int, *args: str) -> Daemon:
    argv = _in(ns, sys.executable, "-m", "zmqllm", "daemon", "--name", name, "--bind", f"tcp://{SUBNET}.{host}:5555",
               "--engine", "echo", "--echo-rate", "50", "--heartbeat-interval", str(HEARTBEAT_S), "--json", *args)
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    daemon = Daemon(name, proc, argv)
    threading.Thread(target=_pump, args=(daemon,), daemon=True).start()
    daemon.wait_ready()
    return daemon


def _peer_states(env: dict[str, str], ns: str, endpoint: str) -> dict[str, str]:
    result = subprocess.run(_in(ns, sys.executable, "-m", "zmqllm", "peers", "--json", "--connect", endpoint,
                                "--timeout", "2"), env=env, capture_output=True, text=True, timeout=30)
    return {r["name"]: r["state"] for r in json.loads(result.stdout)} if result.returncode == 0 else {}


def test_a_partitioned_executor_fails_over_and_rejoins_when_the_link_heals(hosts, zmqllm_env, tmp_path):
    tag, switch = hosts["tag"], hosts["switch"]
    # the hosts bind addresses other machines reach, so the mesh needs its key (CURVE on every link)
    zmqllm_env = {**zmqllm_env, "ZMQLLM_MESH_KEY": keys.create(tmp_path / "mesh.key").path}
    a_ep = f"tcp://{SUBNET}.1:5555"
    daemons = [_daemon(zmqllm_env, f"{tag}-a", "a", 1)]
    try:
        daemons.append(_daemon(zmqllm_env, f"{tag}-b", "b", 2, "--peer", a_ep))
        daemons.append(_daemon(zmqllm_env, f"{tag}-c", "c", 3, "--peer", a_ep))
        everyone = {"a": "alive", "b": "alive", "c": "alive"}
        wait_until(lambda: _peer_states(zmqllm_env, f"{tag}-a", a_ep) == everyone, 10, interval=0.2,
                   what="the three hosts to see each other")
        client = subprocess.Popen(_in(f"{tag}-a", sys.executable, "-m", "zmqllm", "submit", "across the wire",
                                      "--peer", "b", "--max-tokens", "150", "--json", "--connect", a_ep),
                                  env=zmqllm_env, stdout=subprocess.PIPE, text=True)
        events = []
        cut_at = 0.0
        assert client.stdout is not None
        for line in client.stdout:
            events.append(json.loads(line))
            if events[-1]["type"] == "token" and events[-1]["seq"] == 20:
                _ip("-n", switch, "link", "set", f"{tag}bs", "down")  # unplug b
                cut_at = time.monotonic()
        assert client.wait(30) == 0
        tokens = [e for e in events if e["type"] == "token"]
        assert [t["seq"] for t in tokens] == list(range(150))
        failovers = [e for e in events if e["type"] == "failover"]
        assert len(failovers) == 1 and failovers[0]["from"] == "b" and failovers[0]["to"] in ("a", "c")
        assert events[-1]["type"] == "done" and events[-1]["executed_on"][0] == "b"
        assert cut_at and _peer_states(zmqllm_env, f"{tag}-a", a_ep)["b"] == "dead"
        _ip("-n", switch, "link", "set", f"{tag}bs", "up")  # heal
        wait_until(lambda: _peer_states(zmqllm_env, f"{tag}-a", a_ep) == everyone, 15, interval=0.2,
                   what="b to rejoin after the link heals")
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


RUN_SPEC = two_steps(100)


def _runs(env: dict[str, str], ns: str, endpoint: str) -> list[dict]:
    result = subprocess.run(_in(ns, sys.executable, "-m", "zmqllm", "runs", "--here", "--json", "--connect",
                                endpoint, "--timeout", "2"), env=env, capture_output=True, text=True, timeout=30)
    return json.loads(result.stdout) if result.returncode == 0 else []


def test_a_partitioned_orchestrator_does_not_finish_a_run_its_holder_adopted(hosts, zmqllm_env, tmp_path):
    """The orchestrator a is cut off mid-run: its run's holder adopts it and finishes it with the third node as
    the new holder; a finishes the steps it can but may not end the run without a holder's word, and when the
    link heals it hears that a higher epoch exists and stops. Exactly one node finishes the run."""
    tag, switch = hosts["tag"], hosts["switch"]
    zmqllm_env = {**zmqllm_env, "ZMQLLM_MESH_KEY": keys.create(tmp_path / "mesh.key").path}
    (tmp_path / "wf.toml").write_text(RUN_SPEC)
    endpoints = {name: f"tcp://{SUBNET}.{host}:5555" for name, host in (("a", 1), ("b", 2), ("c", 3))}
    daemons = [_daemon(zmqllm_env, f"{tag}-a", "a", 1)]
    try:
        daemons.append(_daemon(zmqllm_env, f"{tag}-b", "b", 2, "--peer", endpoints["a"]))
        daemons.append(_daemon(zmqllm_env, f"{tag}-c", "c", 3, "--peer", endpoints["a"]))
        everyone = {"a": "alive", "b": "alive", "c": "alive"}
        wait_until(lambda: _peer_states(zmqllm_env, f"{tag}-a", endpoints["a"]) == everyone, 10, interval=0.2,
                   what="the three hosts to see each other")
        client = subprocess.Popen(_in(f"{tag}-a", sys.executable, "-m", "zmqllm", "run", str(tmp_path / "wf.toml"),
                                      "--input", "go", "--run-id", "split", "--json", "--connect", endpoints["a"]),
                                  env=zmqllm_env, stdout=subprocess.PIPE, text=True)
        events = []
        assert client.stdout is not None
        for line in client.stdout:
            events.append(json.loads(line))
            if events[-1]["type"] == "task" and events[-1]["key"] == "second" and events[-1]["state"] == "started":
                _ip("-n", switch, "link", "set", f"{tag}as", "down")  # cut a off
                break

        def finished_elsewhere() -> dict | None:
            for name in ("b", "c"):
                for row in _runs(zmqllm_env, f"{tag}-{name}", endpoints[name]):
                    if row["run_id"] == "split" and row["state"] == "done":
                        return row
            return None

        adopted = wait_until(finished_elsewhere, 20, interval=0.2, what="b or c to adopt and finish the run")
        assert adopted["orchestrator"] in ("b", "c") and adopted["epoch"] == 2, adopted
        _ip("-n", switch, "link", "set", f"{tag}as", "up")  # heal
        for line in client.stdout:
            events.append(json.loads(line))
        assert client.wait(30) == 0  # a's client hears that the run moved, and follows it to the adopter's end
        moves = [e for e in events if e["type"] == "failover"]
        assert moves and moves[-1]["kind"] == "orchestrator" and "adopted by" in moves[-1]["reason"], events[-3:]
        assert events[-1]["type"] == "done" and [t["key"] for t in events[-1]["tasks"]] == ["first", "second"]
        rows_a = wait_until(lambda: [r for r in _runs(zmqllm_env, f"{tag}-a", endpoints["a"])
                                     if r["run_id"] == "split" and r["state"] == "adopted"], 10, interval=0.2,
                            what="a to record the run as adopted")
        assert rows_a[0]["orchestrator"] == adopted["orchestrator"]
        done = [(name, r) for name in ("a", "b", "c") for r in _runs(zmqllm_env, f"{tag}-{name}", endpoints[name])
                if r["run_id"] == "split" and r["state"] == "done"]
        assert len(done) == 1, done  # exactly one node finished it
        attached = subprocess.run(_in(f"{tag}-a", sys.executable, "-m", "zmqllm", "run", "--attach", "split",
                                      "--json", "--connect", endpoints["a"]), env=zmqllm_env, capture_output=True,
                                  text=True, timeout=30)
        assert attached.returncode == 0, attached.stderr
        final = json.loads(attached.stdout.splitlines()[-1])
        assert final["type"] == "done" and [t["key"] for t in final["tasks"]] == ["first", "second"]
    finally:
        for daemon in reversed(daemons):
            daemon.stop()

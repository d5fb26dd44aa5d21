"""The mesh key (CURVE): holders mesh and stream, everyone else is refused with a
reason, and the wire speaks CURVE. Real daemons, real sockets, the real CLI."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Daemon, run_cli, wait_until
from zmqllm.net import keys
from zmqllm.client import Client

pytestmark = pytest.mark.timeout(120)


def new_key(env: dict[str, str], path: Path) -> str:
    result = run_cli(env, "keys", "new", str(path))
    assert result.returncode == 0, result.stderr
    return str(path)


def peer_names(env: dict[str, str], endpoint: str, key: str) -> set[str]:
    result = run_cli({**env, "ZMQLLM_MESH_KEY": key}, "peers", "--connect", endpoint, "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"] for row in json.loads(result.stdout) if row["state"] == "alive"}


def zmtp_mechanism(endpoint: str) -> bytes:
    """The security mechanism a node announces in its ZMTP 3 greeting (bytes 12-32)."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03")  # signature and major version: it answers
        # with its whole greeting (sending a mechanism too would let it hang up first on a mismatch)
        greeting = b""
        while len(greeting) < 64:
            chunk = sock.recv(64 - len(greeting))
            if not chunk:
                break
            greeting += chunk
    return greeting[12:32].rstrip(b"\x00")


def test_holders_mesh_and_run_llama_tasks_others_are_refused_with_the_reason(
        spawn: Callable[..., Daemon], zmqllm_env: dict[str, str], tmp_path: Path) -> None:
    key = new_key(zmqllm_env, tmp_path / "mesh.key")
    other = new_key(zmqllm_env, tmp_path / "other.key")
    keyed = {**zmqllm_env, "ZMQLLM_MESH_KEY": key}
    a = spawn("a", env=keyed)
    spawn("b", "--peer", a.endpoint, "--model", "bundled:gemma3-270m", "--threads", "1", "--ctx", "256",
              env=keyed, engine="llama")
    c = spawn("c", "--peer", a.endpoint, "--mesh-key", other)  # another mesh's key
    d = spawn("d", "--peer", a.endpoint)  # no key at all
    wait_until(lambda: peer_names(zmqllm_env, a.endpoint, key) == {"a", "b"}, 20, what="a and b meshed")
    assert zmtp_mechanism(a.endpoint) == b"CURVE" and zmtp_mechanism(d.endpoint) == b"NULL"

    done = run_cli(keyed, "submit", "The capital of France is", "--connect", a.endpoint, "--peer", "b",
                   "--max-tokens", "8", "--temperature", "0", "--json")
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout.splitlines()[-1])
    assert final["type"] == "done" and final["executed_by"] == "b" and final["usage"]["completion_tokens"] == 8

    wait_until(lambda: any("cannot join" in line for line in c.log_lines + d.log_lines), 10, what="refusals")
    wait_until(lambda: any("refused" in line and "at the security handshake" in line for line in a.log_lines), 10,
               what="a to say it refused someone")
    assert any("without this mesh's key, or with another" in line for line in a.log_lines), a.log()
    assert any("its mesh key is not this side's" in line for line in c.log_lines), c.log()
    assert any("has a mesh key and this side has none" in line for line in d.log_lines), d.log()
    assert peer_names(zmqllm_env, a.endpoint, key) == {"a", "b"}  # still: neither got in

    for client_env, reason in [(zmqllm_env, "has a mesh key and this side has none"),
                               ({**zmqllm_env, "ZMQLLM_MESH_KEY": other}, "its mesh key is not this side's")]:
        for command in (["peers"], ["submit", "hello", "--max-tokens", "2"]):  # told at once, not at the timeout
            refused = run_cli(client_env, *command, "--connect", a.endpoint, "--timeout", "60", timeout=30)
            assert refused.returncode == 3 and f"{a.endpoint} refused this client: it" in refused.stderr
            assert reason in refused.stderr


def test_key_files_are_private_never_overwritten_and_bad_ones_are_named(
        spawn: Callable[..., Daemon], zmqllm_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "config" / "zmqllm" / "mesh.key"  # folders made as needed, private
    made = run_cli(zmqllm_env, "keys", "new", str(path))
    assert made.returncode == 0 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    first = made.stdout.splitlines()[0]  # wrote PATH (public key KEY); Z85 keys may hold ")"
    public = first[first.index("public key ") + len("public key "):-1]
    assert len(public) == 40
    shown = run_cli({**zmqllm_env, "ZMQLLM_MESH_KEY": str(path)}, "keys", "show", "--json")
    assert json.loads(shown.stdout) == {"path": str(path), "public_key": public, "too_open": False}
    again = run_cli(zmqllm_env, "keys", "new", str(path))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert run_cli(zmqllm_env, "keys", "show", str(path)).stdout.strip().endswith(public)  # unchanged

    public_only = tmp_path / "public.key"
    public_only.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                   if "secret-key" not in line))
    for bad, why in [(tmp_path / "missing.key", "no such file"), (public_only, "holds no secret key")]:
        daemon = run_cli(zmqllm_env, "daemon", "--name", "x", "--bind", "tcp://127.0.0.1:0", "--mesh-key", str(bad))
        assert daemon.returncode == 2 and f"mesh key {bad}: {why}" in daemon.stderr, daemon.stderr
        client = run_cli(zmqllm_env, "--mesh-key", str(bad), "peers")
        assert client.returncode == 2 and f"mesh key {bad}: {why}" in client.stderr, client.stderr


def test_a_wildcard_bind_advertises_an_address_other_machines_can_dial(
        spawn: Callable[..., Daemon], zmqllm_env: dict[str, str], tmp_path: Path) -> None:
    """Not the host name's address: Debian-style /etc/hosts maps it to 127.0.1.1, which gossip would hand to
    every peer. The default route's source address, where the machine has one."""
    import shutil
    import subprocess

    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip to list this machine's addresses")
    key = new_key(zmqllm_env, tmp_path / "mesh.key")
    node = spawn("w", "--bind", "tcp://0.0.0.0:0", "--mesh-key", key)
    host = node.endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
    mine = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    has_route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True).stdout
    if has_route.strip():
        assert not host.startswith("127.") and f" {host}/" in mine, (host, mine)
    with Client(node.endpoint, 5, keys.load(key)) as client:  # and it serves there
        assert client.status()["name"] == "w"

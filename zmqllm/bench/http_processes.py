"""The processes `zmqllm bench http` measures: daemons serving the HTTP gateway on free ports, and llama.cpp's
`llama-server` set up as a zmqllm llama daemon with one slot is. Each is stopped and reaped when its block is
left, however it is left; each one's log is drained, so a chatty process never blocks on a full pipe, and its
last lines are kept to say why it did not start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from zmqllm.bench.mesh import stop_daemons

READY_TIMEOUT_S = 120.0
"""Longest wait for a daemon's ready line, a peer to join, or llama-server's /health (a model load included)."""


@dataclass
class Node:
    endpoint: str
    http: str


@contextlib.contextmanager
def http_daemons(home: str) -> Iterator[Callable[..., Node]]:
    """`start(name, *extra)` starts a daemon serving HTTP on a free port and returns its endpoints; all are
    stopped when the block is left. Each daemon's log is drained (its last lines kept for a failure's reason),
    so a chatty one never blocks on a full pipe."""
    procs: list[subprocess.Popen[str]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQLLM_") or k == "ZMQLLM_MESH_KEY"}
    env["ZMQLLM_HOME"] = home

    def start(name: str, *extra: str) -> Node:
        argv = [sys.executable, "-P", "-m", "zmqllm", "daemon", "--name", name, "--bind", "tcp://127.0.0.1:0",
                "--http", "127.0.0.1:0", "--json", "--log-level", "warning", *extra]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        ready: list[dict[str, Any]] = []
        tail: deque[str] = deque(maxlen=3)
        got_ready = threading.Event()
        threading.Thread(target=_drain, args=(proc, ready, tail, got_ready), daemon=True).start()
        got_ready.wait(READY_TIMEOUT_S)
        if not ready:
            raise RuntimeError(f"daemon {name} did not start: {' | '.join(tail) or 'no output'}")
        return Node(ready[0]["endpoint"], ready[0]["http"][0])

    try:
        yield start
    finally:
        stop_daemons(procs)


def _drain(proc: subprocess.Popen[str], ready: list[dict[str, Any]], tail: deque[str],
           got_ready: threading.Event) -> None:
    assert proc.stderr is not None
    with contextlib.suppress(ValueError, OSError):  # the pipe closed under us: the daemon is being stopped
        for line in proc.stderr:
            tail.append(line.strip())
            if not ready and '"event": "ready"' in line:
                ready.append(json.loads(line))
                got_ready.set()
    got_ready.set()  # it ended: whoever waits need not wait longer


async def wait_for_nodes(base: str, model: str, nodes: int) -> None:
    """Until the gateway's `/v1/models` lists `model` served by `nodes` live nodes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(base + "/v1/models") as response:
                served = {m["id"]: m.get("nodes", []) for m in (await response.json())["data"]}
            if len(served.get(model, [])) >= nodes:
                return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{base}: {nodes} nodes serving {model} never joined")


@contextlib.contextmanager
def llama_server(binary: str, model: Path, threads: int, ctx: int, slots: int = 1) -> Iterator[str]:
    """`llama-server -np SLOTS` (`ctx` tokens in all) on a free port, settings as the zmqllm daemon's; yields its
    base URL. Raises RuntimeError saying why when it does not come up."""
    port = _free_port()
    proc = subprocess.Popen([binary, "-m", str(model), "-np", str(slots), "-c", str(ctx), "-t", str(threads),
                             "-tb", str(threads), "-ngl", "0", "-fa", "off", "--swa-full", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    tail: deque[str] = deque(maxlen=2)
    threading.Thread(target=_drain, args=(proc, [], tail, threading.Event()), daemon=True).start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _healthy(base):
            if proc.poll() is not None:
                raise RuntimeError(_server_ended(binary, proc.returncode, tail))
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server at {binary} did not answer /health within {READY_TIMEOUT_S:g} s")
            time.sleep(0.2)
        yield base
    finally:
        stop_daemons([proc])


def _server_ended(binary: str, code: int, tail: deque[str]) -> str:
    if code == -signal.SIGILL:  # a -march=native build on a CPU that advertises more than it runs (AMX in a VM)
        return (f"llama-server at {binary} died of SIGILL: it was built for CPU features this machine does not "
                f"run; rebuild it portable, as bin/setup builds llama-cpp-python (CMAKE_ARGS=\"-DGGML_NATIVE=OFF "
                f"-DGGML_AVX2=ON ...\" zmqllm bench http), or give --llama-server PATH")
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    return f"llama-server at {binary} ended while starting ({how}): {' | '.join(tail) or 'no output'}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False

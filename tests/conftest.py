"""Real daemons as real processes for the tests, always reaped.

Each daemon binds port 0 (the OS picks a free port) and is waited for through
its JSON ready line on stderr — never a sleep. Every wait has a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from zmqllm.bench.chaos_runs import two_steps  # noqa: F401  (the tests' two-step workflow)
from zmqllm.client import Client

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass
class Daemon:
    """A running `zmqllm daemon` process."""

    name: str
    proc: subprocess.Popen[str]
    args: list[str]
    log_lines: list[str] = field(default_factory=list)
    ready_event: dict[str, Any] | None = None
    ready_at: float = 0.0
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        assert self.ready_event is not None, f"{self.name} never became ready"
        return str(self.ready_event["endpoint"])

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._ready.wait(0.5)  # let the reader catch the last lines
                raise AssertionError(f"daemon {self.name} not ready (exit {self.proc.poll()}):\n" + self.log())
        assert self.ready_event is not None

    def log(self) -> str:
        return "\n".join(self.log_lines[-60:])

    def client(self, timeout: float = 5.0) -> Client:
        return Client(self.endpoint, timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not stop in time; returns the exit code."""
        return stop_process(self.proc)


def stop_process(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
    """Send `sig`, then SIGKILL if the process does not stop within `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def _pump(daemon: Daemon) -> None:
    assert daemon.proc.stderr is not None
    for line in daemon.proc.stderr:
        line = line.rstrip("\n")
        daemon.log_lines.append(line)
        if daemon.ready_event is None and '"event": "ready"' in line:
            try:
                daemon.ready_event = json.loads(line)
            except ValueError:
                continue
            daemon.ready_at = time.monotonic()
            daemon._ready.set()


def private_env(home: Path) -> dict[str, str]:
    """Environment for zmqllm processes: a private ZMQLLM_HOME, no stray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQLLM_")}
    env["ZMQLLM_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch(env: dict[str, str], name: str, *args: str, heartbeat: float = 0.2, engine: str = "echo",
           bind: str = "tcp://127.0.0.1:0", wait: bool = True) -> Daemon:
    """Start one `zmqllm daemon` process (port 0 unless `bind` says otherwise)."""
    argv = [sys.executable, "-m", "zmqllm", "daemon", "--name", name, "--bind", bind, "--engine", engine,
            "--heartbeat-interval", str(heartbeat), "--json", *args]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    daemon = Daemon(name, proc, argv)
    threading.Thread(target=_pump, args=(daemon,), daemon=True).start()
    if wait:
        daemon.wait_ready()
    return daemon


@pytest.fixture
def zmqllm_env(tmp_path: Path) -> dict[str, str]:
    return private_env(tmp_path / "home")


@pytest.fixture
def spawn(zmqllm_env: dict[str, str]) -> Iterator[Callable[..., Daemon]]:
    """Start daemons: `spawn("a", "--peer", endpoint, heartbeat=0.2)`; all reaped at the end."""
    started: list[Daemon] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None, wait: bool = True, **kwargs: Any) -> Daemon:
        daemon = launch(env or zmqllm_env, name, *args, wait=False, **kwargs)
        started.append(daemon)  # reaped even if it never becomes ready
        if wait:
            daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def run_cli(env: dict[str, str], *args: str, timeout: float = 60.0, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run the real `zmqllm` command line."""
    return subprocess.run([sys.executable, "-m", "zmqllm", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, input=input)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `predicate` until truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- the HTTP gateway ------------------------------------------------------------------------------------

LOCAL_HTTP = ("--http", "127.0.0.1:0")
"""A daemon's gateway on a free loopback port (its URL is in the ready line's `http`)."""


def http_url(daemon: Daemon) -> str:
    assert daemon.ready_event is not None and daemon.ready_event.get("http"), "the daemon serves no HTTP"
    return daemon.ready_event["http"][0]


def alive_names(daemon: Daemon) -> set[str]:
    """The names of the nodes `daemon` sees alive (itself included)."""
    with daemon.client() as client:
        return {row["name"] for row in client.peers() if row["state"] == "alive"}


def http_request(daemon: Daemon, method: str, path: str, body: dict | bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request to a daemon's gateway (status, lower-cased headers, body), for what the official
    clients hide; a dict body goes as JSON."""
    url = urlsplit(http_url(daemon))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture
def http_pair(spawn) -> tuple[Daemon, Daemon]:
    """Two echo nodes (as fast as they go); `a` serves HTTP."""
    a = spawn("a", *LOCAL_HTTP, "--echo-rate", "0")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "0")
    wait_until(lambda: alive_names(a) == {"a", "b"}, 10, what="a sees b")
    return a, b


def process_gone(pid: int) -> bool:
    """Whether `pid` has exited (no such process, or only a zombie left to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def states(daemon: Daemon) -> dict[str, str]:
    """name -> state as `daemon` sees the mesh."""
    with daemon.client() as client:
        return {row["name"]: row["state"] for row in client.peers()}


@dataclass
class StandInSettings:
    """The node settings a role reads (`zmqllm.node.roles.RoleSettings`), for in-process role tests."""

    name: str = "a"
    send_buffer_bytes: int = 1 << 20
    data_dir: Path | None = None


async def until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Let the event loop run until `predicate` holds; fail after `timeout` seconds."""
    import asyncio

    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def sigint_as_usual() -> None:
    """`preexec_fn` for a command a test stops with SIGINT: a shell running the suite in the background (`&`,
    no job control) starts it with SIGINT ignored, and Python keeps an ignored SIGINT ignored, so the command
    would never see the test's Ctrl-C. This restores the default, as a terminal would have it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

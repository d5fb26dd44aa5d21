"""`zmqllm up`: a local mesh of N daemons as child processes, reaped on exit.

Children bind port 0 (the OS picks free ports) and are waited for through their
JSON ready lines; each asks the kernel for SIGTERM should this process die
(PR_SET_PDEATHSIG, see `bind_to_parent`), so no daemon outlives the command that
started it. CPU threads are split across
the daemons, since llama.cpp threads spin and oversubscribed cores collapse
throughput.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from zmqllm.cli.invocation import command_name
from zmqllm.node import paths

READY_TIMEOUT_S = 300.0
"""Model loading (and first-use bundled model assembly) can take a while."""
STOP_TIMEOUT_S = 10.0
SUPERVISE_PERIOD_S = 0.5
_PR_SET_PDEATHSIG = 1
PARENT_ENV = "ZMQLLM_PARENT_PID"


class LaunchError(Exception):
    """A daemon did not start (the message names it and its log), or another `up` is running."""


def hold_up_lock() -> TextIO:
    """Take the lock only one running `zmqllm up` holds (per state dir); keep the returned file open for
    as long as the mesh runs. A second `up` gets a LaunchError naming the running mesh instead: two meshes
    would share node names, log files and journals, and the second's exit would orphan the first's
    state file, so client commands could no longer find it."""
    path = paths.up_lock_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise LaunchError(_running_mesh()) from None
    return lock


def _running_mesh() -> str:
    state = paths.read_state() or {}
    pid, connect = state.get("pid", "?"), state.get("connect", "(still starting)")
    nodes = ", ".join(str(n.get("name")) for n in state.get("nodes", []) if isinstance(n, dict)) or "?"
    return (f"a mesh is already up: {connect}, nodes {nodes} (zmqllm up, pid {pid}; {paths.state_file()}); "
            f"stop it first (q or Ctrl-C in its terminal, or kill {pid}), or set ZMQLLM_HOME to another "
            f"directory to run a second, separate one")


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    log_path: Path
    ready: threading.Event = field(default_factory=threading.Event)
    endpoint: str = ""
    http: list[str] = field(default_factory=list)
    reported_exit: bool = False


def default_nodes(engine: str, cores: int | None = None) -> int:
    """Three daemons, but no more llama daemons than cores (each needs one to itself)."""
    if engine == "echo":
        return 3
    return max(1, min(3, cores or os.cpu_count() or 1))


def threads_per_node(nodes: int, cores: int | None = None) -> int:
    """Cores split evenly; at least one thread each."""
    return max(1, (cores or os.cpu_count() or 1) // nodes)


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP port can be listened on now (port 0 always can)."""
    try:
        with socket.create_server((host, port)):
            return True
    except OSError:
        return False


def bind_to_parent() -> None:
    """Called by a daemon that `zmqllm up` started: stop when the launcher dies.

    Done in the child (not a preexec_fn, which is unsafe with threads running)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return  # not Linux: the launcher's own handlers still reap its children
    if str(os.getppid()) != parent:  # the launcher died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def _pump(child: Child, log: TextIO) -> None:
    for line in child.proc.stderr or ():
        log.write(line)
        log.flush()
        if not child.ready.is_set() and '"event": "ready"' in line:
            try:
                ready = json.loads(line)
                child.endpoint, child.http = ready["endpoint"], list(ready.get("http") or [])
            except (ValueError, KeyError, TypeError):
                continue
            child.ready.set()
    log.close()


def _start(name: str, args: list[str], log_dir: Path) -> Child:
    log_path = log_dir / f"{name}.log"
    # -P: not the current directory first on sys.path, where a folder named zmqllm (a checkout) would shadow
    # the installed package
    argv = [sys.executable, "-P", "-m", "zmqllm", "daemon", "--name", name, "--bind", "tcp://127.0.0.1:0", "--json",
            *args]
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True, env=env)
    child = Child(name, proc, log_path)
    threading.Thread(target=_pump, args=(child, log_path.open("w")), daemon=True).start()
    return child


def _wait_ready(child: Child) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not child.ready.wait(0.1):
        if child.proc.poll() is not None or time.monotonic() > deadline:
            child.ready.wait(0.5)
            tail = child.log_path.read_text().strip().splitlines()[-3:] if child.log_path.exists() else []
            last = _last_message(tail)
            raise LaunchError(f"daemon {child.name} did not start (see {child.log_path}): {last}")


def _last_message(lines: list[str]) -> str:
    for line in reversed(lines):
        try:
            return str(json.loads(line).get("msg", line))
        except ValueError:
            return line
    return "no output"


def _stop_all(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def _emit(as_json: bool, record: dict[str, Any], text: str) -> None:
    print(json.dumps(record) if as_json else text, flush=True)


def run_mesh(*, nodes: int, engine: str, model: str, echo_rate: float, heartbeat_interval: float,
             as_json: bool, dashboard: bool = False, on_start: Callable[[], None] | None = None,
             http: str | None = None) -> int:
    """Start the mesh, report it, then open the dashboard on it (until the user quits)
    or supervise until SIGINT/SIGTERM; returns the exit code. Every daemon started is
    stopped on the way out. A LaunchError if another `up` runs on the same state dir;
    `on_start` is called once this one holds the state dir, before any daemon starts. `http`: the address the
    first node serves the HTTP gateway on (None: none)."""
    lock = hold_up_lock()
    if on_start is not None:
        on_start()
    try:
        return _run_locked(nodes=nodes, engine=engine, model=model, echo_rate=echo_rate,
                           heartbeat_interval=heartbeat_interval, as_json=as_json, dashboard=dashboard, http=http)
    finally:
        lock.close()


def _run_locked(*, nodes: int, engine: str, model: str, echo_rate: float, heartbeat_interval: float,
                as_json: bool, dashboard: bool, http: str | None) -> int:
    state_dir = paths.state_file().parent
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    common = ["--engine", engine, "--heartbeat-interval", str(heartbeat_interval)]
    if engine == "echo":
        common += ["--echo-rate", str(echo_rate)]
    else:
        common += ["--model", model, "--threads", str(threads_per_node(nodes))]
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    children: list[Child] = []
    started = time.monotonic()
    try:
        for i in range(1, nodes + 1):
            seed = ["--peer", children[0].endpoint] if children else ["--http", http] if http else []
            child = _start(f"n{i}", common + seed, log_dir)
            children.append(child)
            _wait_ready(child)
            _emit(as_json, {"type": "node", "name": child.name, "endpoint": child.endpoint, "pid": child.proc.pid,
                            "log": str(child.log_path), **({"http": child.http} if child.http else {})},
                  f"  {child.name}  {child.endpoint}  (log {child.log_path})")
            if stopping.is_set():
                return 130
        connect, command, gateway = children[0].endpoint, command_name(), children[0].http
        paths.write_state({"connect": connect, "pid": os.getpid(), "http": gateway,
                           "nodes": [{"name": c.name, "endpoint": c.endpoint, "pid": c.proc.pid} for c in children]})
        _emit(as_json, {"type": "ready", "connect": connect, "nodes": nodes, "engine": engine, "http": gateway,
                        "elapsed_s": round(time.monotonic() - started, 3)},
              f"mesh of {nodes} up in {time.monotonic() - started:.1f}s ({_engine_note(engine, model)}); "
              f"client commands find it without --connect:\n"
              f"  {command} peers\n  {command} submit \"Once upon a time\" --max-tokens 32\n"
              + "".join(f"HTTP (OpenAI, Anthropic, Ollama APIs; /metrics) at {url}:\n"
                        f"  curl {url}/v1/completions -d '{{\"prompt\": \"Once upon a time\", \"max_tokens\": 32}}'\n"
                        for url in gateway[:1])
              + "Ctrl-C stops every daemon.")
        if dashboard:
            from zmqllm.tui.app import run_dashboard

            signal.signal(signal.SIGINT, signal.default_int_handler)  # the dashboard handles Ctrl-C itself
            return run_dashboard(connect)
        _supervise(children, stopping, as_json)
        return 0
    finally:
        _stop_all(children)
        state = paths.read_state()
        if state and state.get("pid") == os.getpid():
            paths.state_file().unlink(missing_ok=True)
        if children:
            _emit(as_json, {"type": "stopped", "nodes": len(children)}, f"stopped {len(children)} daemons")


def _engine_note(engine: str, model: str) -> str:
    if engine == "echo":
        return "echo engine: streams the prompt's words back, no model"
    return f"llama engine, model {model}"


def _supervise(children: list[Child], stopping: threading.Event, as_json: bool) -> None:
    while not stopping.wait(SUPERVISE_PERIOD_S):
        for child in children:
            code = child.proc.poll()
            if code is not None and not child.reported_exit:
                child.reported_exit = True
                _emit(as_json, {"type": "exited", "name": child.name, "code": code, "log": str(child.log_path)},
                      f"daemon {child.name} exited with code {code} (see {child.log_path})")
        if all(child.reported_exit for child in children):
            return

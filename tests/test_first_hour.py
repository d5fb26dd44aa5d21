"""What a new user meets in the first hour: hints that name a working command, `up` without a terminal or
twice, bounded waits on a missing mesh, config errors caught before anything starts, `zmqllm info`."""

from __future__ import annotations

import json
import urllib.request
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import private_env, run_cli, stop_process
from zmqllm.cli.invocation import COMMAND_ENV, command_name
from zmqllm.cli.main import main
from zmqllm.cli.shell import install_lines

UP_READY_S = 60.0
STOP_S = 15.0


def free_port() -> int:
    """A port the OS just handed out and nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- 1. hints name a command that works --------------------------------------------------------------------

def test_hint_is_plain_zmqllm_only_when_path_finds_this_program(tmp_path: Path) -> None:
    script = tmp_path / "venv" / "bin" / "zmqllm"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    python = str(script.parent / "python")
    assert command_name({}, str(script), which=lambda _: str(script), executable=python) == "zmqllm"
    assert command_name({COMMAND_ENV: "bin/zmqllm"}, str(script), which=lambda _: None,
                        executable=python) == "bin/zmqllm"
    other = tmp_path / "elsewhere" / "zmqllm"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    assert command_name({}, str(script), which=lambda _: str(other), executable=python) == str(script)
    assert command_name({}, "-c", which=lambda _: None, executable=python) == f"{python} -m zmqllm"


def test_install_shell_prints_lines_that_link_zmqllm_into_local_bin(tmp_path: Path) -> None:
    target = Path(sys.executable).parent / "zmqllm"
    home = tmp_path / "home"
    lines = install_lines({"HOME": str(home), "PATH": "/usr/bin:/bin"}, target)
    assert any("ln -sf" in line for line in lines) and lines[-1] == 'export PATH="$HOME/.local/bin:$PATH"'
    subprocess.run(["sh", "-c", "\n".join(lines)], env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True,
                   timeout=30)
    assert (home / ".local" / "bin" / "zmqllm").resolve() == target.resolve()
    on_path = {"HOME": str(home), "PATH": f"{home}/.local/bin:/usr/bin"}
    assert install_lines(on_path, target) == [f"# zmqllm is already on your PATH ({home}/.local/bin/zmqllm): "
                                              "nothing to do"]


# --- 2 and 3. `up` without a terminal, and a second `up` ----------------------------------------------------

class Up:
    """A `zmqllm up --engine echo` process with its output read by threads (never a blocking read)."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        http = [] if any(arg.startswith("--http") or arg == "--no-http" for arg in args) else ["--http", "127.0.0.1:0"]
        argv = [sys.executable, "-m", "zmqllm", "up", "--engine", "echo", "--nodes", "1", *http, *args]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err.append), daemon=True).start()
        self.lines: list[str] = []

    @staticmethod
    def _read(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)  # end of output: the process is ending

    def wait_for(self, text: str, timeout: float = UP_READY_S) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            try:
                line = self.out.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"`up` never printed {text!r}: {self.lines} {self.err}")
            self.lines.append(line)

    def stop(self) -> int:
        return stop_process(self.proc, signal.SIGINT, STOP_S)


@pytest.fixture
def up_env(tmp_path: Path) -> dict[str, str]:
    env = private_env(tmp_path / "home")
    env[COMMAND_ENV] = "bin/zmqllm"
    env["PATH"] = "/usr/bin:/bin"  # no `zmqllm` on it, as after `bin/setup`
    return env


@pytest.fixture
def first_up(up_env: dict[str, str]) -> Iterator[Up]:
    up = Up(up_env)  # stdout is a pipe: no dashboard
    try:
        up.wait_for("Ctrl-C stops every daemon")
        yield up
    finally:
        up.stop()


def test_up_without_a_terminal_says_it_runs_headless_and_names_a_command_that_works(first_up: Up) -> None:
    assert any(line.startswith("no terminal: running headless") and "`bin/zmqllm dash`" in line
               for line in first_up.err), first_up.err
    assert "  bin/zmqllm peers" in first_up.lines and not any(line == "  zmqllm peers" for line in first_up.lines)
    assert first_up.stop() == 0


def test_up_serves_http_on_its_first_node_and_prints_and_records_the_url(first_up: Up,
                                                                          up_env: dict[str, str]) -> None:
    state = json.loads((Path(up_env["ZMQLLM_HOME"]) / "mesh.json").read_text())
    [url] = state["http"]
    assert any(line.startswith("HTTP (OpenAI, Anthropic, Ollama APIs; /metrics) at " + url) for line in first_up.lines)
    assert any(line.strip().startswith(f"curl {url}/v1/completions") for line in first_up.lines)
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        assert [model["id"] for model in json.loads(response.read())["data"]] == ["echo"]


def test_a_second_up_refuses_naming_the_running_mesh_and_leaves_it_intact(first_up: Up,
                                                                          up_env: dict[str, str]) -> None:
    state_file = Path(up_env["ZMQLLM_HOME"]) / "mesh.json"
    state = json.loads(state_file.read_text())
    log = Path(up_env["ZMQLLM_HOME"]) / "logs" / "n1.log"
    log_before = log.read_text()
    # without a terminal and without --no-dash: the refusal is its one line (no "running headless" first)
    second = run_cli(up_env, "up", "--engine", "echo", "--nodes", "1", "--http", "127.0.0.1:0", timeout=UP_READY_S)
    assert second.returncode == 1, second
    assert second.stderr.count("\n") == 1 and "a mesh is already up" in second.stderr
    assert state["connect"] in second.stderr and f"pid {state['pid']}" in second.stderr
    assert json.loads(state_file.read_text()) == state and log.read_text().startswith(log_before)
    peers = run_cli(up_env, "peers", "--json", timeout=30)  # the client commands still find the first mesh
    assert peers.returncode == 0 and [p["name"] for p in json.loads(peers.stdout)] == ["n1"], peers
    assert first_up.stop() == 0
    assert not state_file.exists()


# --- 4. a mesh that is not there: every client command answers within --timeout -----------------------------

CLIENT_COMMANDS = [["peers"], ["status"], ["models"], ["tasks"], ["runs"], ["result", "t1"], ["cancel", "t1"],
                   ["submit", "hello"], ["chat", "hello"],
                   ["run", str(Path(__file__).parent.parent / "configs/workflows/ensemble.toml"), "--input", "x"]]
TIMEOUT_S = 2.0
SLACK_S = 1.5
"""Beyond the timeout and the interpreter's own start (measured in the same test), at most this."""


def test_every_client_command_gives_up_within_its_timeout_on_an_endpoint_nobody_listens_on(
        tmp_path: Path) -> None:
    env = private_env(tmp_path / "home")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert run_cli(env, "--version", timeout=60).returncode == 0
    startup_s = time.monotonic() - started
    for args in CLIENT_COMMANDS:
        started = time.monotonic()
        result = run_cli(env, *args, "--connect", endpoint, "--timeout", str(TIMEOUT_S), timeout=60)
        elapsed = time.monotonic() - started
        assert result.returncode == 3, (args, result)
        assert result.stderr.strip() == f"Error: no answer from {endpoint} within {TIMEOUT_S:g} s " \
                                        "(is a daemon running there?)", (args, result.stderr)
        assert elapsed < startup_s + TIMEOUT_S + SLACK_S, f"{args[0]} took {elapsed:.2f}s (start {startup_s:.2f}s)"


# --- 5. configuration errors before anything starts ---------------------------------------------------------

def test_daemon_with_a_missing_model_exits_2_naming_the_key_and_its_source(tmp_path: Path) -> None:
    env = private_env(tmp_path / "home")
    missing = str(tmp_path / "nope.gguf")
    result = run_cli(env, "daemon", "--model", missing, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr == f"Error: flag --model: key 'model': model file {missing} does not exist\n"
    result = run_cli(env, "up", "--model", missing, "--no-dash", timeout=60)  # checked before any daemon starts
    assert result.returncode == 2 and "key 'model'" in result.stderr, result
    assert not (tmp_path / "home" / "logs").exists()


@pytest.mark.parametrize("option, value", [("--temperature", "-2"), ("--top-p", "1.5"), ("--top-k", "-1"),
                                           ("--min-p", "-0.1"), ("--repeat-penalty", "0")])
def test_sampling_values_out_of_range_are_usage_errors(option: str, value: str) -> None:
    result = CliRunner().invoke(main, ["submit", "hi", option, value, "--connect", "tcp://127.0.0.1:1"])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output


# --- 9. a daemon per machine, as a service ------------------------------------------------------------------

UNIT = Path(__file__).parent.parent / "configs" / "systemd" / "zmqllm.service"


def unit_fields(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections and their keys (a key may repeat, e.g. Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_runs_one_daemon_restarting_on_failure_logging_to_journald() -> None:
    service = unit_fields(UNIT.read_text())["Service"]
    assert service["ExecStart"] == ["/opt/zmqllm/.venv/bin/zmqllm daemon"]
    assert service["Restart"] == ["on-failure"] and service["RestartPreventExitStatus"] == ["2"]
    assert service["StandardError"] == ["journal"] and service["KillSignal"] == ["SIGTERM"]
    environment = dict(value.split("=", 1) for value in service["Environment"])
    assert environment == {"ZMQLLM_CONFIG": "/etc/zmqllm/daemon.toml", "ZMQLLM_HOME": "/var/lib/zmqllm"}
    assert service["StateDirectory"] == ["zmqllm"]  # systemd makes /var/lib/zmqllm, owned by the service user
    assert unit_fields(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = "/usr/bin/systemd-analyze"
    if not os.access(analyze, os.X_OK):
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "zmqllm.service"  # its ExecStart must exist: point it at this checkout's
    unit.write_text(UNIT.read_text().replace("/opt/zmqllm/.venv/bin/zmqllm", str(Path(sys.executable).parent
                                                                                   / "zmqllm")))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_info_shows_every_path_and_setting_with_its_source(tmp_path: Path) -> None:
    env = private_env(tmp_path / "home")
    key = tmp_path / "mesh.key"
    assert run_cli(env, "keys", "new", str(key), timeout=60).returncode == 0
    env["ZMQLLM_CTX"] = "1024"
    config = Path(__file__).parent.parent / "configs" / "systemd" / "daemon.toml"
    result = run_cli(env, "info", "--json", "--config", str(config), "--mesh-key", str(key), "--name", "box",
                     timeout=60)
    assert result.returncode == 0, result
    doc = json.loads(result.stdout)
    home = tmp_path / "home"
    assert {name: entry["path"] for name, entry in doc["paths"].items()} == {
        "config": str(config), "data": str(home / "nodes" / "box"),
        "journal": str(home / "nodes" / "box" / "journal.sqlite3"), "mesh_key": str(key),
        "cache": str(home / "cache"), "logs": str(home / "logs"), "state_file": str(home / "mesh.json")}
    settings = doc["settings"]
    assert settings["name"] == {"value": "box", "source": "flag --name"}
    assert settings["ctx"] == {"value": 1024, "source": "environment ZMQLLM_CTX"}
    assert settings["bind"] == {"value": "tcp://0.0.0.0:5555", "source": f"file {config}"}
    assert settings["batch"]["source"] == "default"
    bad = run_cli(env, "info", "--ctx", "1", timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: flag --ctx: key 'ctx'"), bad


def test_up_falls_back_to_a_free_port_only_when_its_default_http_port_is_taken() -> None:
    from click.core import ParameterSource

    from zmqllm.cli.daemon import _up_http

    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        assert _up_http(busy, ParameterSource.DEFAULT) == "127.0.0.1:0"
        assert _up_http(busy, ParameterSource.COMMANDLINE) == busy  # asked for: the daemon says it is taken
    assert _up_http(busy, ParameterSource.DEFAULT) == busy

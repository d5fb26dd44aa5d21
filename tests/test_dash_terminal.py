"""`zmqllm up` in a real terminal (tmux): the dashboard shows the mesh, `q` leaves no daemon behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import process_gone, wait_until

from zmqllm.node import paths


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=10).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_up_opens_the_dashboard_on_three_peers_and_q_stops_every_daemon(zmqllm_env):
    socket = f"zmqllm-test-{os.getpid()}"
    command = f"{sys.executable} -m zmqllm up --engine echo --nodes 3 --heartbeat-interval 0.2"
    env_prefix = " ".join(f"{k}={v}" for k, v in (("ZMQLLM_HOME", zmqllm_env["ZMQLLM_HOME"]),
                                                 ("TERM", "xterm-256color")))
    subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-x", "120", "-y", "40",
                    f"cd {os.getcwd()} && env {env_prefix} {command}"], check=True, timeout=10)
    try:
        def screen_shows_peers() -> bool:
            screen = _tmux(socket, "capture-pane", "-p")
            return all(f"n{i}" in screen for i in (1, 2, 3)) and "alive" in screen and "peers" in screen

        wait_until(screen_shows_peers, 60, interval=0.25, what="the dashboard to show n1, n2, n3")
        state = json.loads(paths.state_file(zmqllm_env).read_text())
        pids = [node["pid"] for node in state["nodes"]]
        assert len(pids) == 3
        _tmux(socket, "send-keys", "q")

        def all_gone() -> bool:
            return all(process_gone(pid) for pid in pids)

        wait_until(all_gone, 20, interval=0.1, what="every daemon to stop after q")
        wait_until(lambda: not paths.state_file(zmqllm_env).exists(), 5, what="the state file to go")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=10)


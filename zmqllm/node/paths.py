"""Where zmqllm keeps files on a user's machine (state and cache), XDG-style.

`ZMQLLM_HOME`, when set, holds everything (handy for tests and for several
independent meshes on one machine).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_CONNECT = "tcp://127.0.0.1:5555"


def _base(env: Mapping[str, str], xdg_key: str, fallback: str) -> Path:
    home = env.get("ZMQLLM_HOME")
    if home:
        return Path(home).expanduser()
    xdg = env.get(xdg_key)
    user_home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    root = Path(xdg) if xdg and os.path.isabs(xdg) else user_home / fallback  # XDG: relative paths ignored
    return root / "zmqllm"


def data_root(env: Mapping[str, str]) -> Path:
    """Durable per-node data (journal, keys) lives under here, one folder per node name."""
    return _base(env, "XDG_DATA_HOME", ".local/share")


def state_file(env: Mapping[str, str] | None = None) -> Path:
    """The file `zmqllm up` records its mesh in, so client commands find it."""
    return _base(os.environ if env is None else env, "XDG_STATE_HOME", ".local/state") / "mesh.json"


def up_lock_file(env: Mapping[str, str] | None = None) -> Path:
    """Locked (flock) by the running `zmqllm up` for its whole life: a second one sees it and refuses, so two
    meshes never share node names, logs, journals or the state file. The kernel drops the lock when its
    holder dies, so a crashed `up` leaves nothing stale behind."""
    return state_file(env).with_name("up.lock")


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Materialised bundled models and other re-creatable files."""
    base = _base(os.environ if env is None else env, "XDG_CACHE_HOME", ".cache")
    return base / "cache" if (env or os.environ).get("ZMQLLM_HOME") else base


def read_state(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    try:
        data = json.loads(state_file(env).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(state: dict[str, Any], env: Mapping[str, str] | None = None) -> None:
    path = state_file(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def default_connect(env: Mapping[str, str] | None = None) -> str:
    """`ZMQLLM_CONNECT`, else the mesh the last `zmqllm up` started, else the default port."""
    env = os.environ if env is None else env
    if env.get("ZMQLLM_CONNECT"):
        return env["ZMQLLM_CONNECT"]
    state = read_state(env)
    if state and isinstance(state.get("connect"), str):
        return state["connect"]
    return DEFAULT_CONNECT

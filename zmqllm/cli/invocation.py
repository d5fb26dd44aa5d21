"""How the user can run zmqllm again: the command that works on this machine, for the hints we print.

After `bin/setup`, `zmqllm` is usually not on PATH: telling a user to run `zmqllm peers` then fails. The
hint names `zmqllm` only when PATH finds this very program; otherwise the checkout's `bin/zmqllm` (as the
user typed it: `bin/zmqllm` exports it in `ZMQLLM_COMMAND`), or the script that is running.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

COMMAND_ENV = "ZMQLLM_COMMAND"
"""Set by `bin/zmqllm` to the path it was run as (`bin/zmqllm`, `/home/me/zmqllm/bin/zmqllm`)."""
PROGRAM = "zmqllm"


def entry_point(executable: str | None = None) -> Path:
    """The installed `zmqllm` script beside this Python (the virtual environment's `bin/zmqllm`)."""
    return Path(executable or sys.executable).parent / PROGRAM


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def command_name(env: Mapping[str, str] | None = None, argv0: str | None = None,
                 which: Callable[[str], str | None] = shutil.which, executable: str | None = None) -> str:
    """`zmqllm` when PATH finds this program, else the path that runs it (as typed, so relative paths work
    from the same directory), else `python -m zmqllm` with this interpreter."""
    env = os.environ if env is None else env
    argv0 = sys.argv[0] if argv0 is None else argv0
    launcher = env.get(COMMAND_ENV, "")
    on_path = which(PROGRAM)
    if on_path and any(_same_file(on_path, mine) for mine in (launcher, argv0, entry_point(executable)) if mine):
        return PROGRAM
    if launcher:
        return launcher
    if Path(argv0).name == PROGRAM and Path(argv0).is_file():
        return argv0
    return f"{executable or sys.executable} -m {PROGRAM}"

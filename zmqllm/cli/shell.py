"""`zmqllm install-shell`: the lines that put `zmqllm` on the user's PATH, as pipx does it.

pipx (and uv's tool installs) link each entry point into `~/.local/bin`, which
most distributions put on PATH for login shells. The virtual environment's own
`bin/` is not added to PATH: it would also shadow the user's `python` and `pip`.
The output is a shell script, so a user can read it, then run it with `| sh`.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path

import click

from zmqllm.cli.invocation import PROGRAM, entry_point

LINK_DIR = "~/.local/bin"


def install_lines(env: Mapping[str, str], target: Path) -> list[str]:
    """Shell lines that link `target` as `~/.local/bin/zmqllm` (nothing when PATH already finds it)."""
    home = Path(env.get("HOME") or Path.home())
    link_dir = home / ".local" / "bin"
    on_path = shutil.which(PROGRAM, path=env.get("PATH", ""))
    if on_path and os.path.realpath(on_path) == os.path.realpath(target):
        return [f"# {PROGRAM} is already on your PATH ({on_path}): nothing to do"]
    lines = [f"# link {target} into {LINK_DIR}, as pipx does (run these lines, or pipe this into sh):",
             f"mkdir -p {LINK_DIR} && ln -sf {shlex.quote(str(target))} {LINK_DIR}/{PROGRAM}"]
    path_dirs = [Path(part).expanduser() for part in env.get("PATH", "").split(os.pathsep) if part]
    if link_dir not in path_dirs:
        lines += [f"# {LINK_DIR} is not on your PATH: add this line to ~/.bashrc (or ~/.zshrc) and open a new shell",
                  'export PATH="$HOME/.local/bin:$PATH"']
    return lines


@click.command("install-shell")
def install_shell() -> None:
    """Print the lines that put `zmqllm` on your PATH (a link in ~/.local/bin).

    \b
    Examples:
      bin/zmqllm install-shell          read them
      bin/zmqllm install-shell | sh     run them
    """
    target = entry_point()
    if not target.is_file():  # run as `python -m zmqllm` from an environment without the script
        found = shutil.which(PROGRAM)
        target = Path(found) if found else target
    click.echo("\n".join(install_lines(os.environ, target)))

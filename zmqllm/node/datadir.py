"""One daemon per data dir: an OS file lock held for the process's life.

Two daemons on one data dir would share one journal: the second, at its start,
would mark the first's live tasks `interrupted`. The default data dir is named
after the node, and the default name after the host, so two daemons started
without settings on one machine collide. The lock is `flock` on DATA_DIR/lock,
taken before the journal is opened; the kernel drops it when the process exits
however it exits (SIGKILL included), so a crash never leaves a stale lock. The
file holds the owner's pid, for the message that names it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "lock"
PID_MAX_BYTES = 32
"""More than any pid's decimal digits: what is read back from a lock file."""


class DataDirInUse(Exception):
    """Another process holds the data dir's lock; the message is one line naming its pid."""


class DataDirLock:
    """The lock on one data dir, held from `acquire` until `release` (or the process's end)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Lock `data_dir` (creating it) without waiting. Raises DataDirInUse when another
        process holds it, OSError when the directory or file cannot be made."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            who = f"pid {owner}" if owner is not None else "a process that has not yet written its pid"
            raise DataDirInUse(f"data dir {data_dir} is in use by another zmqllm daemon ({who}): give this one "
                               "another --data-dir or --name") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(data_dir, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the data dir up (idempotent). The pid stays in the file: only the lock counts."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, PID_MAX_BYTES, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

"""Record a dashboard session to a file, and replay it later instead of a mesh.

The file is JSON Lines, one object per line, `t` always first:

    {"t": 0.0, "start": 1732390000.12, "connect": "tcp://127.0.0.1:5555", "format": "zmqllm-dash/1"}
    {"t": 0.512, "node": "a", "events": [{"k": "msg", "ts": ..., ...}, ...], "dropped": 0}
    {"t": 1.003, "peers": [{"name": "a", "state": "alive", ...}, ...]}

- `t`: seconds since the recording started (monotonic clock, 4 decimals); lines are in `t` order.
- the header (first line, optional): `start` is the unix time of t = 0, so event `ts` (unix seconds)
  and replay time share one clock; without it, replay infers `start` from the first event.
- a batch line: one EVENTS batch exactly as `AsyncClient.subscribe()` yielded it (docs/protocol.md,
  "Trace events"): the node it came from, its events, and how many that node dropped for us.
- a peers line: the rows of one `AsyncClient.peers()` poll of the connected node (about every second).

Lines that are not JSON objects are skipped and counted, so a file cut short by a crash still replays.
Replay honours `speed` (2.0 = twice as fast) against a `ReplayClock` that tests step by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

from zmqllm.tui.state import MeshState

log = logging.getLogger(__name__)

FORMAT = "zmqllm-dash/1"
REPLAY_STEP_S = 0.05
"""How often autoplay moves the replay clock (wall seconds)."""


class InjectUnavailable(Exception):
    """The feed cannot run tasks (a replay has no mesh behind it)."""


class Recorder:
    """Appends every batch and peers poll to a JSON Lines file (format above)."""

    def __init__(self, path: str | Path, *, connect: str = "", clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._file: IO[str] | None = self.path.open("w", encoding="utf-8", buffering=1)
        self._t0 = clock()
        self._write({"t": 0.0, "start": round(wall(), 4), "connect": connect, "format": FORMAT})

    def batch(self, batch: dict[str, Any]) -> None:
        self._write({"t": self._elapsed(), "node": batch.get("node"), "events": batch.get("events", []),
                     "dropped": batch.get("dropped", 0)})

    def peers(self, rows: list[dict[str, Any]]) -> None:
        self._write({"t": self._elapsed(), "peers": rows})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _elapsed(self) -> float:
        return round(self._clock() - self._t0, 4)

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")


class ReplayClock:
    """Replay time as unix seconds: `start` (the recording's t = 0) plus `position`."""

    def __init__(self, start: float | None = None) -> None:
        self.start = start
        self.position = 0.0

    def __call__(self) -> float:
        return (self.start or 0.0) + self.position


def read_records(lines: Iterator[str]) -> Iterator[dict[str, Any] | None]:
    """Parsed lines; None for a line that is not a JSON object with a numeric `t`."""
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            yield None
            continue
        yield record if isinstance(record, dict) and isinstance(record.get("t"), (int, float)) else None


class ReplaySource:
    """Feeds a recording into a MeshState as if it came from a mesh.

    With `autoplay` the clock follows wall time × `speed`; without it, nothing moves
    until `seek()` — what tests use for a deterministic, frozen clock."""

    def __init__(self, path: str | Path, state: MeshState, clock: ReplayClock, *, speed: float = 1.0,
                 autoplay: bool = True) -> None:
        if speed <= 0:
            raise ValueError(f"replay speed must be > 0, got {speed:g}")
        self.path = Path(path)
        self.state = state
        self.clock = clock
        self.speed = speed
        self.autoplay = autoplay
        self.finished = False
        self.skipped = 0
        self._file: IO[str] | None = None
        self._records: Iterator[dict[str, Any] | None] = iter(())
        self._next: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def description(self) -> str:
        state = "finished" if self.finished else f"{self.clock.position:.1f} s"
        return f"replay {self.path.name} ×{self.speed:g} · {state}"

    def start(self) -> None:
        """Open the file (OSError if it cannot be read) and, with autoplay, start playing."""
        self._file = self.path.open(encoding="utf-8")
        self._records = read_records(iter(self._file))
        self._advance()
        if self._next is not None and "start" in self._next and "node" not in self._next:
            self.clock.start = float(self._next["start"])
            self._advance()
        if self.autoplay:
            self._task = asyncio.create_task(self._play(), name="replay")

    def seek(self, position: float) -> None:
        """Move replay time forward to `position` seconds, delivering everything up to it."""
        position = max(self.clock.position, position)
        while self._next is not None and self._next["t"] <= position:
            self.clock.position = max(self.clock.position, float(self._next["t"]))  # as it was recorded
            self._deliver(self._next)
            self._advance()
        self.clock.position = position
        if self._next is None and not self.finished:
            self.finished = True
            self.state.notice = "replay finished"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def submit(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        raise InjectUnavailable("a replay has no mesh to run tasks on")

    def run_workflow(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        raise InjectUnavailable("a replay has no mesh to run workflows on")

    async def cancel(self, task_id: str, origin: str) -> None:
        raise InjectUnavailable("a replay has no mesh to cancel tasks on")

    async def _play(self) -> None:
        began, offset = time.monotonic(), self.clock.position
        while not self.finished:
            self.seek(offset + (time.monotonic() - began) * self.speed)
            await asyncio.sleep(REPLAY_STEP_S)

    def _advance(self) -> None:
        self._next = None
        for record in self._records:
            if record is not None:
                self._next = record
                return
            self.skipped += 1

    def _deliver(self, record: dict[str, Any]) -> None:
        now = self.clock()
        if "node" in record:
            if self.clock.start is None:
                events = record.get("events") or [{}]
                self.clock.start = float(events[0].get("ts", record["t"])) - record["t"]
                now = self.clock()
            self.state.apply_batch(record, now)
        elif isinstance(record.get("peers"), list):
            self.state.apply_peers(record["peers"], now)

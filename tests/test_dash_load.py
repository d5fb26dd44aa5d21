"""The dashboard on a real echo mesh under sustained traffic: it keeps ingesting, repainting at its
rate, answering keys, and holding its memory.

Traffic: one client streams short tasks back to back through origin a (executors b and c in turn)
from daemons at unlimited echo rate; each token is ~3 trace events (b's TOKEN to a, a's token event,
a's TOKEN to the client), so the dashboard gets tens of thousands of events a second here. Keys are
posted the way the terminal driver posts them, not with `Pilot.press`: that waits for the whole
process to go idle (up to 2 s a key under load). Their latency comes from the app's own probe
(`MeshDashboard.on_key`).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from typing import Any

from textual import events

from zmqllm.client import AsyncClient
from zmqllm.tui.app import MeshDashboard
from zmqllm.tui.eventlog import LOG_MAX_LINES
from zmqllm.tui.live import LiveSource
from zmqllm.tui.state import MAX_TASKS, TRACE_LIMIT, MeshState

SIZE = (120, 40)
DAEMON_ARGS = ("--echo-rate", "0", "--log-level", "warning")  # warning: no log line per task in this process
TASK_TOKENS = 40
WINDOW_S = 4.0
"""How long the loaded dashboard is measured (after its task list and trace have filled up)."""
KEYS = ("p", "p", "2", "s", "3", "down", "down", "up")
"""Pause and resume the log, sort the peers, move in the tasks table (2 and 3 focus those panes)."""
MIN_EVENTS_PER_S = 2_000
MAX_KEY_P95_MS = 500.0
MIN_REPAINTS_PER_S = 5.0
MAX_RSS_GROWTH_BYTES = 40 * 2**20
"""Caches (Textual's line and segment caches, the log's lines) still fill during the window: ~6 MB
measured over 4 s; a leak of 300 B an event would pass 40 MB."""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class Traffic:
    """Short echo tasks, one after another, through `origin` until `stop`."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.tasks_done = 0
        self._stopping = False
        self._job: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._job = asyncio.create_task(self._run())

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the task in flight finish, then raise whatever ended the traffic early; nothing to do if it
        never started. (Not a cancel: on Python 3.11 one mid-stream can be lost in the client's
        `asyncio.wait_for` while tokens keep arriving.)"""
        if self._job is None:
            return
        self._stopping = True
        done, _ = await asyncio.wait({self._job}, timeout=timeout)
        if not done:
            self._job.cancel()
            raise AssertionError(f"traffic did not stop within {timeout}s")
        self._job.result()

    async def _run(self) -> None:
        async with AsyncClient(self.origin, timeout=10) as client:
            while not self._stopping:
                async for event in client.submit("load test words", max_tokens=TASK_TOKENS,
                                                 peer="bc"[self.tasks_done % 2]):
                    assert event["type"] != "error", event
                self.tasks_done += 1


async def test_dashboard_keeps_up_with_a_flooding_echo_mesh(spawn: Callable[..., Any]) -> None:
    a = spawn("a", *DAEMON_ARGS)
    spawn("b", "--peer", a.endpoint, *DAEMON_ARGS)
    spawn("c", "--peer", a.endpoint, *DAEMON_ARGS)
    state = MeshState(time.time)
    app = MeshDashboard(state, LiveSource(a.endpoint, state))
    traffic = Traffic(a.endpoint)
    async with app.run_test(size=SIZE):
        try:
            await _until(lambda: {node for _, node, _ in state.trace} >= {"a", "b", "c"}, 15,
                         "trace events from all three nodes")
            traffic.start()
            await _until(lambda: len(state.tasks) == MAX_TASKS and len(state.trace) == TRACE_LIMIT, 15,
                         f"{MAX_TASKS} tasks and a full trace")
            app.key_latencies_ms.clear()
            events_before, repaints_before, rss_before = state.events_total, app.repaints, _rss_bytes()
            started = time.perf_counter()
            presses, pace = 0, random.Random(7)
            while time.perf_counter() - started < WINDOW_S:
                key = KEYS[presses % len(KEYS)]
                app.post_message(events.Key(key, key if len(key) == 1 else None))
                presses += 1
                await _until(lambda: len(app.key_latencies_ms) == presses, 5, f"key {key!r} shown")
                await asyncio.sleep(pace.uniform(0.05, 0.25))  # a person's pace, at any phase of the repaint
            elapsed = time.perf_counter() - started
            ingested = (state.events_total - events_before) / elapsed
            repaint_rate = (app.repaints - repaints_before) / elapsed
            rss_growth = _rss_bytes() - rss_before
        finally:
            await traffic.stop()
    p50, p95 = app.key_latency_ms(0.5), app.key_latency_ms(0.95)
    figures = (f"{ingested:,.0f} events/s, {repaint_rate:.1f} repaints/s, {presses} keys p50 {p50:.1f} ms "
               f"p95 {p95:.1f} ms, RSS +{rss_growth / 2**20:.1f} MB, {traffic.tasks_done} tasks, "
               f"{state.dropped_total} dropped")
    print(figures)  # shown with -rA or -s
    assert ingested >= MIN_EVENTS_PER_S, figures
    assert repaint_rate >= MIN_REPAINTS_PER_S, figures
    assert presses >= 10 and p95 is not None and p95 < MAX_KEY_P95_MS, figures
    assert "sorted by" in str(app.peers.border_subtitle)  # the keys did what they say
    assert len(state.tasks) == MAX_TASKS and len(state.trace) == TRACE_LIMIT, figures
    assert app.tasks.row_count <= MAX_TASKS and len(app.events.lines) <= LOG_MAX_LINES, figures
    assert rss_growth < MAX_RSS_GROWTH_BYTES, figures

"""The message trace: one line per message, peer change and task change, newest at the bottom.

The plain `Log` widget with `max_lines` (DASHBOARD.md: `RichLog` cannot keep up
with floods). Events are only formatted when written, at most LOG_TICK_MAX a
tick; under a flood the older ones of a tick are summarised in one line. `/`
filters live by regex (an invalid one turns the input red, its error is shown
right under it, and the last valid filter stays); `p` freezes the view while the count of new events keeps going.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Log

from zmqllm.tui.state import MeshState

LOG_MAX_LINES = 2_000
LOG_TICK_MAX = 200
"""Lines written per tick at most; the rest of a flood is counted, not drawn."""
TraceEntry = tuple[int, str, dict[str, Any]]


def format_event(node: str, event: dict[str, Any]) -> str:
    """One trace line: `HH:MM:SS.mmm node TYPE src → dst task size` (peer and task changes alike)."""
    ts = float(event.get("ts", 0.0))
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
    kind = event.get("k")
    if kind == "msg":
        task = f"  task {str(event['task_id'])[:8]}" if event.get("task_id") else ""
        return (f"{stamp} {node:<8} {event.get('type', '?'):<10} {event.get('src')} → {event.get('dst')}"
                f"{task}  {event.get('size', 0)} B")
    if kind == "peer":
        change = f"{event.get('old') or 'new'} → {event.get('state')}"
        return f"{stamp} {node:<8} {'PEER':<10} {event.get('name')}: {change}"
    if kind == "task":
        extra = "".join(f"  {key} {event[key]}" for key in ("executor", "tokens", "finish_reason", "error")
                        if event.get(key))
        return f"{stamp} {node:<8} {'TASK':<10} {str(event.get('task_id'))[:8]} {event.get('state')}{extra}"
    return f"{stamp} {node:<8} {str(kind).upper():<10} {event}"


class TraceLog(Log):
    """Textual's `Log`, measuring new lines' width on the loop instead of in a thread worker: that worker
    reaches for the app after it has gone when lines arrive as the dashboard quits, and its NoActiveAppError
    fails the app on exit. A repaint writes at most a few hundred short lines, so this costs little."""

    def _update_size(self, updates: int, lines: list[str]) -> None:
        if lines:
            self._update_maximum_width(updates, max(cell_len(self._process_line(line)) for line in lines))


class EventLog(Vertical):
    """The trace log, its filter input, and the counters in the border."""

    BINDINGS = [Binding("escape", "close_filter", "Clear filter", show=False)]
    ALLOW_MAXIMIZE = True  # `z` zooms the whole pane (counters and filter too), not just the log inside

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.paused = False
        self.pattern: re.Pattern[str] | None = None
        self.filter_error: str | None = None
        self._written_seq = 0
        self._state: MeshState | None = None
        self._log = TraceLog(max_lines=LOG_MAX_LINES, highlight=False, id="trace-log")
        self._input = Input(placeholder="/ regex filter · Enter keeps it · Esc clears it", id="trace-filter",
                            compact=True)

    def compose(self) -> ComposeResult:
        yield self._log
        yield self._input

    def on_mount(self) -> None:
        self.border_title = "events"
        self._input.display = False

    @property
    def lines(self) -> list[str]:
        """What the log shows now."""
        return list(self._log.lines)

    @property
    def pending(self) -> int:
        """Events counted but not shown (while paused)."""
        return (self._state.trace_seq if self._state else 0) - self._written_seq

    # -- actions -------------------------------------------------------------------------

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if self._state is not None:
            self.update_log(self._state)

    def open_filter(self) -> None:
        following = self._log.is_vertical_scroll_end
        self._input.display = True
        self._input.focus()
        if following:
            self._follow_after_layout()

    def action_close_filter(self) -> None:
        following = self._log.is_vertical_scroll_end
        self._input.value = ""
        self._input.display = False
        self._log.focus()
        if following:
            self._follow_after_layout()

    def _follow_after_layout(self) -> None:
        """Showing or hiding the filter input resizes the log by a row, which would leave a view that was at
        the newest line one row short of it, and so no longer following: scroll to the end once laid out."""
        self._log.call_after_refresh(self._log.scroll_end, animate=False, immediate=True, x_axis=False)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.set_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._log.focus()

    def set_filter(self, text: str) -> None:
        """Filter by `text` (case-insensitive regex); an invalid one is shown and ignored."""
        try:
            pattern = re.compile(text, re.IGNORECASE) if text else None
        except re.error as exc:
            self.filter_error = str(exc)
            self._input.add_class("-invalid")
            self.add_class("-invalid-filter")
            self._update_counters(self._state)
            return
        self.filter_error = None
        self._input.remove_class("-invalid")
        self.remove_class("-invalid-filter")
        self.pattern = pattern
        self._rewrite()

    # -- feeding ---------------------------------------------------------------------------

    def update_log(self, state: MeshState) -> None:
        """Write what arrived since the last call (nothing while paused) and update the counters."""
        self._state = state
        if not self.paused and state.trace_seq != self._written_seq:
            new = self._since(state.trace, self._written_seq, LOG_TICK_MAX)
            skipped = state.trace_seq - self._written_seq - len(new)
            lines = self._matching(new)
            if skipped > 0:
                lines.insert(0, f"… {skipped:,} events not shown (flood)")
            if lines:
                self._log.write_lines(lines)
            self._written_seq = state.trace_seq
        self._update_counters(state)

    def _rewrite(self) -> None:
        """Show the kept trace again under the current filter (up to what the view has reached), at its
        newest lines: `Log.clear` leaves the old scroll offset behind, and the view would land somewhere in the
        past and, being off the end, stop following new lines."""
        self._log.clear()
        if self._state is not None:
            kept = [entry for entry in self._state.trace if entry[0] <= self._written_seq]
            self._log.write_lines(self._matching(kept[-LOG_MAX_LINES:]))
            self._update_counters(self._state)
        self._follow_after_layout()

    def _matching(self, entries: Iterable[TraceEntry]) -> list[str]:
        lines = (format_event(node, event) for _, node, event in entries)
        return [line for line in lines if self.pattern.search(line)] if self.pattern else list(lines)

    @staticmethod
    def _since(trace: deque[TraceEntry], seq: int, limit: int) -> list[TraceEntry]:
        """The newest entries after `seq`, at most `limit`, oldest first."""
        newer: list[TraceEntry] = []
        for entry in reversed(trace):
            if entry[0] <= seq or len(newer) == limit:
                break
            newer.append(entry)
        newer.reverse()
        return newer

    def _update_counters(self, state: MeshState | None) -> None:
        """The border subtitle, right under the filter input: an invalid regex first, then the counters."""
        if self.filter_error is not None:
            self.border_subtitle = f"✗ invalid regex: {self.filter_error}"
            return
        if state is None:
            return
        parts = [f"{state.events_total:,} events", f"{state.dropped_total:,} dropped"]
        if state.malformed:
            parts.append(f"{state.malformed:,} malformed")
        if self.pattern is not None:
            parts.append(f"filter /{self.pattern.pattern}/")
        if self.paused:
            parts.append(f"PAUSED · {self.pending:,} new (p)")
        subtitle = " · ".join(parts)
        if subtitle != self.border_subtitle:
            self.border_subtitle = subtitle

"""Running and recent tasks, and the output of the one under the cursor.

The table follows the same rule as the peers table (update changed cells only);
running tasks' elapsed time is the one cell that moves every tick. The output
pane re-renders only when its task's `version` moved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from zmqllm.tui.state import FINISHED, TaskInfo

COLUMNS = ("task", "state", "origin", "executor", "tokens", "elapsed")
STATE_COLOURS = {"routing": "cyan", "assigned": "cyan", "streaming": "yellow", "done": "green", "failed": "red"}
SHORT_ID = 8
CLOCK_REFRESH_S = 0.5
"""How often the elapsed time of running tasks that changed in nothing else is rewritten: each cell update
costs the table a re-render, and under a flood dozens of tasks run at once."""


LABEL_MAX = 20
"""A workflow step's key is shown up to this many characters."""


def task_label(task_id: str) -> str:
    """What the task column shows: a workflow step's key (its tasks are `RUN_ID.KEY.SUFFIX`, so their first
    characters are all the run's), else the id's first characters."""
    parts = task_id.split(".")
    if len(parts) >= 3:
        return ".".join(parts[1:-1])[:LABEL_MAX]
    return task_id[:SHORT_ID]


class TaskLabel(Text):
    """The task column's cell. It carries the full task id: the table sorts rows by task, not by label,
    since step keys repeat from one run to the next."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_label(task_id))
        self.task_id = task_id


def task_cells(task: TaskInfo, now: float) -> tuple[Any, ...]:
    """The row for one task, in COLUMNS order."""
    state = task.state if task.state != "done" or not task.finish_reason else f"done ({task.finish_reason})"
    return (TaskLabel(task.task_id), Text(state, style=STATE_COLOURS.get(task.state, "")), task.origin or "-",
            task.executor or "-", str(task.tokens), f"{task.elapsed(now):.1f}s")


class TasksTable(DataTable[Any]):
    """Running tasks first, then finished ones, newest first; the one under the cursor is shown in the
    output pane."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._versions: dict[str, int] = {}
        self._cells: dict[str, tuple[Any, ...]] = {}
        self._rank: dict[str, tuple[bool, float]] = {}
        self._clock_shown = float("-inf")

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column, key=column)

    @property
    def selected_task(self) -> str | None:
        """The task under the cursor."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def update_tasks(self, tasks: Mapping[str, TaskInfo], now: float) -> None:
        """Add new tasks, drop forgotten ones, rewrite changed cells (running tasks: their clock);
        keep running tasks on top, newest first, and the cursor on the task it was on."""
        reorder = False
        tick_clock = now - self._clock_shown >= CLOCK_REFRESH_S  # running tasks' elapsed cells, not every repaint
        if tick_clock:
            self._clock_shown = now
        for gone in [task_id for task_id in self._cells if task_id not in tasks]:
            self.remove_row(gone)
            self._rank.pop(gone, None)
            del self._cells[gone], self._versions[gone]
        for task_id, task in tasks.items():
            if self._versions.get(task_id) == task.version and (task.state in FINISHED or not tick_clock):
                continue
            self._versions[task_id] = task.version
            cells = task_cells(task, now)
            old = self._cells.get(task_id)
            rank = (task.state in FINISHED, -task.started)
            reorder = reorder or self._rank.get(task_id) != rank
            self._rank[task_id] = rank
            if old is None:
                self.add_row(*cells, key=task_id)
            else:
                for column, new, before in zip(COLUMNS, cells, old):
                    if new != before:  # a column grows to fit (`done (cancelled)`): never cut a state
                        self.update_cell(task_id, column, new, update_width=True)
            self._cells[task_id] = cells
        if reorder:
            selected = self.selected_task
            self.sort("task", key=lambda label: self._rank.get(label.task_id, (True, 0.0)))
            if selected is not None:
                self.select_task(selected)

    def select_task(self, task_id: str) -> None:
        """Put the cursor on `task_id`'s row (it then shows in the output pane)."""
        if task_id in self._cells:
            self.move_cursor(row=self.get_row_index(task_id))


class OutputPane(VerticalScroll):
    """The output text of one task, growing as its tokens arrive; stays at the bottom unless scrolled up."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._body = Static("select a task to see its output", markup=False)
        self._shown: tuple[str, int] | None = None
        self.text = ""

    def compose(self) -> ComposeResult:
        yield self._body

    def show_task(self, task: TaskInfo | None) -> None:
        if task is None:
            return
        if self._shown == (task.task_id, task.version):
            return
        following = self._shown is None or self._shown[0] != task.task_id or self.is_vertical_scroll_end
        self._shown = (task.task_id, task.version)
        self.text = task.text
        body = Text(self.text)
        if task.error:
            body.append(f"\n[{task.error}]", style="red")
        self._body.update(body)
        status = task.state if not task.finish_reason else f"{task.state} · {task.finish_reason}"
        self.border_title = f"output · {task_label(task.task_id)} · {status} · {task.tokens} tok"
        if following:
            self.call_after_refresh(self.scroll_end, animate=False)

"""The peers table: one row per node, updated cell by cell, sortable by any column.

Rows are never cleared and re-added (that resets the cursor and costs a full
redraw): each tick only peers whose `version` moved are looked at, and only
their changed cells are written with `update_cell`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from zmqllm.tui.state import PeerInfo

COLUMNS = ("name", "endpoint", "models", "state", "slots", "cache", "queued", "tok/s", "hb age")
STATE_COLOURS = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "bright_black",
                 "unknown": "bright_black"}
SPARK_BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 8


def sparkline(values: Iterable[float], width: int = SPARK_WIDTH) -> str:
    """The last `width` values as bars scaled to their maximum (flat when all are zero)."""
    recent = list(values)[-width:]
    top = max(recent, default=0.0)
    if top <= 0:
        return SPARK_BARS[0] * len(recent)
    return "".join(SPARK_BARS[min(len(SPARK_BARS) - 1, int(v / top * (len(SPARK_BARS) - 1)))] for v in recent)


def sort_value(cell: Any) -> tuple[int, float | str]:
    """Numbers sort as numbers (`3/4` by its first number, `12.5 ▂▅` by 12.5), everything else as text."""
    plain = str(cell).strip()
    head = plain.split(" ")[0].split("/")[0].rstrip("s")
    try:
        return (0, float(head))
    except ValueError:
        return (1, plain.lower())


def peer_cells(peer: PeerInfo) -> tuple[Any, ...]:
    """The row for one peer, in COLUMNS order."""
    age = "-" if peer.heartbeat_age_s is None else f"{peer.heartbeat_age_s:.1f}s"
    name = Text(peer.name, style="bold") if peer.is_self else peer.name
    cache = "-" if peer.cache_hit is None else f"{peer.cache_hit:.0%}"
    return (name, peer.endpoint, model_cell(peer), Text(peer.state, style=STATE_COLOURS.get(peer.state, "")),
            f"{peer.busy}/{peer.total}", cache, str(peer.queued),
            f"{peer.tok_s:6.1f} {sparkline(peer.tok_history)}", age)


def model_cell(peer: PeerInfo) -> Text:
    """Every model the node serves: loaded ones plain, loading ones yellow with '…', the others dim."""
    cell = Text()
    for i, model in enumerate(peer.models):
        if i:
            cell.append(",")
        if model in peer.loading:
            cell.append(model + "…", style="yellow")
        elif peer.loaded is None or model in peer.loaded:
            cell.append(model)
        else:
            cell.append(model, style="dim")
    return cell


class PeersTable(DataTable[Any]):
    """Every node of the mesh; `s` cycles the sort column, `S` reverses it, a header click sorts by it."""

    BINDINGS = [
        Binding("s", "cycle_sort", "Sort peers"),
        Binding("S", "reverse_sort", "Reverse sort", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._versions: dict[str, int] = {}
        self._cells: dict[str, tuple[Any, ...]] = {}
        self.sort_column = 0
        self.sort_reverse = False

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column, key=column)

    def update_peers(self, peers: Mapping[str, PeerInfo]) -> None:
        """Write what changed since the last call."""
        resort = False
        for name, peer in peers.items():
            if self._versions.get(name) == peer.version:
                continue
            self._versions[name] = peer.version
            cells = peer_cells(peer)
            old = self._cells.get(name)
            if old is None:
                self.add_row(*cells, key=name)
                resort = True
            else:
                for column, new, before in zip(COLUMNS, cells, old):
                    if new != before:
                        self.update_cell(name, column, new, update_width=True)
                        resort = resort or column == COLUMNS[self.sort_column]
            self._cells[name] = cells
        if resort:
            self._sort()

    def select_peer(self, name: str) -> None:
        """Put the cursor on `name`'s row."""
        if name in self._cells:
            self.move_cursor(row=self.get_row_index(name))

    def action_cycle_sort(self) -> None:
        self.sort_by((self.sort_column + 1) % len(COLUMNS))

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._sort()

    def sort_by(self, column: int) -> None:
        self.sort_column = column
        self._sort()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        if event.column_index == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        self.sort_by(event.column_index)

    def _sort(self) -> None:
        self.sort(COLUMNS[self.sort_column], key=sort_value, reverse=self.sort_reverse)
        arrow = "▼" if self.sort_reverse else "▲"
        self.border_subtitle = f"sorted by {COLUMNS[self.sort_column]} {arrow} (s/S)"

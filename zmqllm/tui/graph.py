"""The message graph: nodes on a circle, an edge per pair that talks, pulses along busy edges.

Drawn on Textual's Line API (DASHBOARD.md: ~0.3 ms a tick where a canvas redraw
costs 4 ms): a static layer of edge paths, rebuilt only when the node set, the
edge set or the size changes, plus an overlay (node boxes, rate labels, moving
pulses) recomputed each tick. Only rows whose overlay or edge colour changed are
refreshed, so an idle mesh costs nothing to draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from zmqllm.tui.state import EdgeRate

STATE_STYLES = {"alive": "black on green", "suspect": "black on yellow", "dead": "white on red",
                "left": "white on bright_black", "unknown": "white on bright_black"}
KIND_STYLES = {"heartbeat": "blue", "task": "yellow", "token": "green", "error": "bold red"}
IDLE_EDGE_STYLE = Style.parse("bright_black")
PULSE = "●"
PULSE_BASE_SPEED = 0.3
"""Edge lengths a pulse travels per second on an idle-ish edge; busier edges go faster (log of the rate)."""
PULSE_MAX_SPEED = 2.5
MAX_PULSE_STEP_S = 0.5
"""A stall (a suspended terminal, a replay seek) moves pulses at most this much time at once."""
BOLD = Style(bold=True)
MAX_BOX_WIDTH = 18
MIN_LABEL_WIDTH = len("16/16 suspect")
"""Boxes are wide enough for any state, so a state change never needs a new layout."""
Cell = tuple[str, Style]
EdgeKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class NodeView:
    """What a node box shows."""

    name: str
    model: str
    state: str
    busy: int
    total: int


def edge_char(dx: int, dy: int) -> str:
    """The glyph for one step of a line towards the next cell (dx, dy): runs of ─ and │ joined by ╱ or ╲."""
    if dy == 0:
        return "─"
    if dx == 0:
        return "│"
    return "╲" if (dx > 0) == (dy > 0) else "╱"


def _cell(value: float) -> int:
    """Round half up, after shedding float noise (so mirrored nodes land on the same row)."""
    return math.floor(round(value, 6) + 0.5)


def line_cells(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Bresenham's line from (x0, y0) to (x1, y1), both ends included."""
    cells, dx, dy = [], abs(x1 - x0), -abs(y1 - y0)
    sx, sy, err = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1), abs(x1 - x0) - abs(y1 - y0)
    while True:
        cells.append((x0, y0))
        if (x0, y0) == (x1, y1):
            return cells
        doubled = 2 * err
        if doubled >= dy:
            err, x0 = err + dy, x0 + sx
        if doubled <= dx:
            err, y0 = err + dx, y0 + sy


class MessageGraph(Widget, can_focus=True):
    """Nodes and the traffic between them; ←/→ pick a node, Enter (or a click) chooses it."""

    BINDINGS = [
        Binding("left,h", "step_node(-1)", "Previous node", show=False),
        Binding("right,l", "step_node(1)", "Next node", show=False),
        Binding("enter", "choose_node", "Show node in peers", show=False),
    ]

    class NodeChosen(Message):
        """The user chose a node (Enter or click)."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.selected: str | None = None
        self.nodes: dict[str, NodeView] = {}
        self._order: list[str] = []
        self._boxes: dict[str, Region] = {}
        self._paths: dict[EdgeKey, list[tuple[int, int]]] = {}
        self._base: list[dict[int, tuple[str, EdgeKey]]] = []
        self._edge_rows: dict[EdgeKey, range] = {}
        self._edges: dict[EdgeKey, EdgeRate] = {}
        self._edge_styles: dict[EdgeKey, Style] = {}
        self._overlay: dict[int, dict[int, Cell]] = {}
        self._phase: dict[EdgeKey, float] = {}
        self._now: float | None = None
        self._elapsed = 0.0
        self._styles: dict[tuple[str, str, bool], Style] = {}

    # -- feeding -------------------------------------------------------------------------

    def update_graph(self, nodes: list[NodeView], edges: list[EdgeRate], now: float) -> None:
        """Show this tick's nodes and edge rates, refreshing only the rows that change. Pulses move with
        `now` (the state's clock), not with the number of ticks: a frozen replay clock draws the same frame."""
        elapsed = min(MAX_PULSE_STEP_S, max(0.0, now - self._now)) if self._now is not None else 0.0
        self._now = now
        self._elapsed = elapsed
        self.nodes = {node.name: node for node in nodes}
        edges_now = {(e.a, e.b): e for e in edges if e.a in self.nodes and e.b in self.nodes}
        order = sorted(self.nodes)
        if order != self._order or edges_now.keys() != self._edges.keys():
            self._order, self._edges = order, edges_now
            self._layout()
            return
        self._edges = edges_now
        dirty: set[int] = set()
        for key, edge in edges_now.items():
            style = self._edge_style(edge)
            if style != self._edge_styles.get(key):
                self._edge_styles[key] = style
                dirty.update(self._edge_rows.get(key, ()))
        overlay = self._build_overlay(advance=True)
        for y in set(overlay) | set(self._overlay):
            if overlay.get(y) != self._overlay.get(y):
                dirty.add(y)
        self._overlay = overlay
        width = self.size.width
        if dirty and width:
            self.refresh(*(Region(0, y, width, 1) for y in sorted(dirty)))

    def on_resize(self, event: events.Resize) -> None:
        self._layout()

    # -- layout (on topology change or resize only) --------------------------------------------

    def _layout(self) -> None:
        width, height = self.size
        self._boxes, self._paths, self._edge_rows = {}, {}, {}
        self._base = [{} for _ in range(height)]
        if not self._order or width < 4 or height < 1:
            self._overlay = {}
            self.refresh()
            return
        tall = height >= 10 and width >= 40
        box_h = 3 if tall else 1
        names = max(len(name) for name in self._order)
        if tall:
            widest = max(names, MIN_LABEL_WIDTH, *(len(self.nodes[name].model) for name in self._order))
        else:
            widest = names + 1 + MIN_LABEL_WIDTH
        box_w = min(MAX_BOX_WIDTH, width, widest + 2)
        count = len(self._order)
        start = math.pi if count == 2 else -math.pi / 2
        rx, ry = max(0.0, (width - box_w) / 2 - 1), max(0.0, (height - box_h) / 2)
        angles = [start + 2 * math.pi * i / count for i in range(count)]
        xs = [rx * math.cos(a) if count > 1 else 0.0 for a in angles]
        ys = [ry * math.sin(a) if count > 1 else 0.0 for a in angles]
        shift_x, shift_y = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2  # centre the shape, not the circle
        for name, dx, dy in zip(self._order, xs, ys):
            x = min(max(0, _cell(width / 2 + dx - shift_x - box_w / 2)), width - box_w)
            y = min(max(0, _cell(height / 2 + dy - shift_y - box_h / 2)), height - box_h)
            self._boxes[name] = Region(x, y, box_w, box_h)
        for key in self._edges:
            self._draw_edge(key)
        self._edge_styles = {key: self._edge_style(edge) for key, edge in self._edges.items()}
        self._overlay = self._build_overlay(advance=False)
        self.refresh()

    def _draw_edge(self, key: EdgeKey) -> None:
        (ax, ay), (bx, by) = (self._boxes[name].center for name in key)
        x0, y0, x1, y1 = int(ax), int(ay), int(bx), int(by)
        cells = [(x, y) for x, y in line_cells(x0, y0, x1, y1) if not self._in_box(x, y)]
        for i, (x, y) in enumerate(cells):
            nx, ny = cells[i + 1] if i + 1 < len(cells) else (2 * x - cells[i - 1][0], 2 * y - cells[i - 1][1]) \
                if i else (x + x1 - x0, y + y1 - y0)
            self._base[y][x] = (edge_char(nx - x, ny - y), key)
        self._paths[key] = cells
        if cells:
            rows = [y for _, y in cells]
            self._edge_rows[key] = range(min(rows), max(rows) + 1)

    # -- overlay (every tick) ----------------------------------------------------------------

    def _build_overlay(self, *, advance: bool) -> dict[int, dict[int, Cell]]:
        """Pulses, then rate labels (a label is never hidden by a pulse), then node boxes on top."""
        overlay: dict[int, dict[int, Cell]] = {}
        width = self.size.width
        busy = [(key, edge, self._paths[key]) for key, edge in self._edges.items()
                if edge.rate > 0 and self._paths.get(key)]
        for key, edge, path in busy:
            phase = self._phase.get(key, 0.0)
            if advance:
                speed = min(PULSE_MAX_SPEED, PULSE_BASE_SPEED * (1 + math.log1p(edge.rate)))
                phase = (phase + speed * self._elapsed) % 1.0
                self._phase[key] = phase
            step = int(phase * len(path))
            px, py = path[step] if edge.forward >= 0.5 else path[len(path) - 1 - step]
            overlay.setdefault(py, {})[px] = (PULSE, self._edge_styles[key] + BOLD)
        for key, edge, path in busy:
            label = f"{edge.rate:.0f}/s" if edge.rate >= 10 else f"{edge.rate:.1f}/s"
            mx, my = path[len(path) // 2]
            for i, char in enumerate(label):
                x = mx - len(label) // 2 + i
                if 0 <= x < width and not self._in_box(x, my):
                    overlay.setdefault(my, {})[x] = (char, self._edge_styles[key] + BOLD)
        for name, box in self._boxes.items():
            node = self.nodes[name]
            style = self._node_style(node, name == self.selected)
            for dy, line in enumerate(self._box_lines(node, box.height > 1)):
                text = line[: box.width].center(box.width)
                row = overlay.setdefault(box.y + dy, {})
                for dx, char in enumerate(text):
                    row[box.x + dx] = (char, style)
        return overlay

    def _in_box(self, x: int, y: int) -> bool:
        return any(box.contains(x, y) for box in self._boxes.values())

    @staticmethod
    def _box_lines(node: NodeView, tall: bool) -> list[str]:
        slots = f"{node.busy}/{node.total}"
        if tall:
            return [node.name, node.model or "-", f"{slots} {node.state}"]
        return [f"{node.name} {slots}" + ("" if node.state == "alive" else f" {node.state}")]

    def _node_style(self, node: NodeView, selected: bool) -> Style:
        key = (node.name, node.state, selected)
        style = self._styles.get(key)
        if style is None:
            style = Style.parse(STATE_STYLES.get(node.state, "reverse"))
            if selected:
                style += Style(bold=True, underline=True)
            style = self._styles[key] = style + Style(meta={"node": node.name})
        return style

    @staticmethod
    def _edge_style(edge: EdgeRate) -> Style:
        return Style.parse(KIND_STYLES[edge.kind]) if edge.rate > 0 else IDLE_EDGE_STYLE

    # -- drawing -----------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width, base_style = self.size.width, self.rich_style
        base = self._base[y] if y < len(self._base) else {}
        over = self._overlay.get(y, {})
        segments: list[Segment] = []
        run: list[str] = []
        run_style: Style | None = None
        for x in range(width):
            if x in over:
                char, style = over[x]
            elif x in base:
                char, key = base[x]
                style = self._edge_styles.get(key, IDLE_EDGE_STYLE)
            else:
                char, style = " ", None
            if style != run_style and run:
                segments.append(Segment("".join(run), base_style + run_style if run_style else base_style))
                run = []
            run_style = style
            run.append(char)
        if run:
            segments.append(Segment("".join(run), base_style + run_style if run_style else base_style))
        return Strip(segments, width)

    # -- choosing a node -------------------------------------------------------------------------

    def action_step_node(self, step: int) -> None:
        if not self._order:
            return
        if self.selected in self._order:
            index = self._order.index(self.selected) + step
        else:
            index = 0 if step > 0 else -1
        self.select_node(self._order[index % len(self._order)])

    def action_choose_node(self) -> None:
        if self.selected is not None:
            self.post_message(self.NodeChosen(self.selected))

    def on_click(self, event: events.Click) -> None:
        name = event.style.meta.get("node")
        if isinstance(name, str):
            self.select_node(name)
            self.post_message(self.NodeChosen(name))

    def select_node(self, name: str) -> None:
        """Highlight `name` (Enter then shows it in the peers table)."""
        self.selected = name
        self._overlay = self._build_overlay(advance=False)
        self.refresh()

"""`zmqllm dash`: a live terminal view of the mesh (graph, peers, tasks, output, trace).

Data flows one way: a feed (`LiveSource` on a mesh, `ReplaySource` on a
recording) folds what arrives into a `MeshState` at once; a ~10 Hz timer copies
the state into the widgets inside one `batch_update()`. The event rate never
decides how often anything is drawn, and the feed never waits on the screen.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Static

from zmqllm.client import MeshUnreachable, RequestFailed
from zmqllm.tui.confirm import ConfirmScreen
from zmqllm.tui.eventlog import EventLog
from zmqllm.tui.graph import MessageGraph, NodeView
from zmqllm.tui.help import HelpScreen, HelpSection
from zmqllm.tui.inject import InjectRequest, InjectScreen
from zmqllm.tui.live import LiveSource
from zmqllm.tui.peers import PeersTable
from zmqllm.tui.recording import InjectUnavailable, Recorder, ReplayClock, ReplaySource
from zmqllm.tui.state import FINISHED, MeshState
from zmqllm.tui.tasks import OutputPane, TasksTable, task_label
from zmqllm.tui.textual_api import message_clock

log = logging.getLogger(__name__)

REFRESH_S = 0.1
"""Widgets are updated this often (10 Hz), whatever the event rate."""
KEY_LATENCY_SAMPLES = 1_000
"""Key-to-screen latencies kept (the newest ones), in `MeshDashboard.key_latencies_ms`."""

PANE_ACTIONS = {"help", "inject", "cancel_task", "filter", "toggle_pause", "zoom", "focus_pane", "sort_peers"}
"""Actions of the main screen, off while a modal screen is up."""

SubmitFn = Callable[[InjectRequest], AsyncIterator[dict[str, Any]]]
CancelFn = Callable[[str, str], Awaitable[None]]


class Feed(Protocol):
    """Where the state comes from: a live mesh or a recording."""

    @property
    def description(self) -> str: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, request: InjectRequest) -> AsyncIterator[dict[str, Any]]: ...

    def run_workflow(self, request: InjectRequest) -> AsyncIterator[dict[str, Any]]: ...

    async def cancel(self, task_id: str, origin: str) -> None: ...


class DashboardError(Exception):
    """A dashboard argument that cannot work (missing replay file, unwritable record file, bad speed)."""


class MeshDashboard(App[int]):
    """Graph, peers, tasks, output and trace of one mesh, seen through `feed`.

    `submit`/`cancel` default to the feed's; tests pass fakes."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "zmqllm dash"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("i", "inject", "Inject"),
        Binding("c", "cancel_task", "Cancel task"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("p", "toggle_pause", "Pause log"),
        Binding("z", "zoom", "Zoom pane"),
        Binding("s", "sort_peers", "Sort peers"),
        Binding("1", "focus_pane('graph')", "Focus graph", show=False),
        Binding("2", "focus_pane('peers')", "Focus peers", show=False),
        Binding("3", "focus_pane('tasks')", "Focus tasks", show=False),
        Binding("4", "focus_pane('output')", "Focus output", show=False),
        Binding("5", "focus_pane('trace-log')", "Focus events", show=False),
    ]

    def __init__(self, state: MeshState, feed: Feed, *, submit: SubmitFn | None = None,
                 cancel: CancelFn | None = None, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.state = state
        self.feed = feed
        self.refresh_s = refresh_s
        self._submit: SubmitFn = submit or feed.submit
        self._cancel: CancelFn = cancel or feed.cancel
        self._jobs: set[asyncio.Task[None]] = set()
        self._timer: Timer | None = None
        self._stopped = False
        self._follow_task: str | None = None
        self._banner_text = ""
        self.key_latencies_ms: deque[float] = deque(maxlen=KEY_LATENCY_SAMPLES)
        """Milliseconds from a key being read to the screen refreshed after its binding ran (see on_key)."""
        self.repaints = 0
        """refresh_view calls so far: whether the 10 Hz repaint keeps its rate under a flood."""
        self.graph = MessageGraph(id="graph")
        self.peers = PeersTable(id="peers")
        self.tasks = TasksTable(id="tasks")
        self.output = OutputPane(id="output")
        self.events = EventLog(id="events")

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="banner", markup=False)
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield self.graph
                yield self.peers
            with Vertical(id="right"):
                yield self.tasks
                yield self.output
        yield self.events
        yield Footer()

    def on_mount(self) -> None:
        self.graph.border_title = "graph"
        self.peers.border_title = "peers"
        self.tasks.border_title = "tasks"
        self.output.border_title = "output"
        try:
            self.feed.start()
        except OSError as exc:
            self.state.link_error = f"cannot start: {exc}"
        self._timer = self.set_interval(self.refresh_s, self.refresh_view)

    async def on_unmount(self) -> None:
        await self.stop_feed()

    async def stop_feed(self) -> None:
        """Stop repainting and every job, then the feed (which closes its sockets last)."""
        if self._stopped:
            return
        self._stopped = True
        if self._timer is not None:
            self._timer.stop()
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self.feed.stop()

    # -- the 10 Hz repaint -----------------------------------------------------------------

    def refresh_view(self) -> None:
        """Copy the state into the widgets (only what changed), in one batch."""
        if self._stopped:
            return
        self.repaints += 1
        state = self.state
        now = state.clock()
        try:
            with self.batch_update():
                nodes = [NodeView(p.name, p.models[0] if p.models else "", p.state, p.busy, p.total)
                         for p in state.peers.values()]
                self.graph.update_graph(nodes, state.edge_rates(now), now)
                self.peers.update_peers(state.peers)
                self.tasks.update_tasks(state.tasks, now)
                if self._follow_task is not None and self._follow_task in state.tasks:
                    self.tasks.select_task(self._follow_task)
                    self._follow_task = None
                selected = self.tasks.selected_task
                self.output.show_task(state.tasks.get(selected) if selected else None)
                self.events.update_log(state)
                self._show_banner(state.link_error, state.notice)
                subtitle = f"{self.feed.description} · {len(state.peers)} nodes · {len(state.tasks)} tasks"
                if subtitle != self.sub_title:
                    self.sub_title = subtitle
        except Exception as exc:  # a drawing bug must not put a traceback on screen
            log.exception("repaint failed")
            self._show_banner(f"dashboard error: {exc!r}", None)

    # -- key-to-screen latency probe -------------------------------------------------------

    def on_key(self, event: events.Key) -> None:
        """Sample how long a key takes to show; always on, as it costs a clock read, a queued callback and
        a deque append a key.

        Start: `event.time`, stamped when the driver read the key, so the time it waited in the app's
        queue behind a flood counts. End: the screen has been refreshed after the key was handled. This
        handler runs when the key has bubbled up to the app, in the same dispatch as the app's binding
        lookup (focused widget's bindings, then the screen's and the app's); `call_after_refresh` queues
        behind that dispatch, and the screen runs it only after its next update has been written out.
        `Pilot.press` cannot measure this: it waits for the whole process to go idle. Keys a widget
        consumes itself (typing into a form) and priority bindings never get here and are not sampled.
        """
        self.call_after_refresh(self._key_shown, event.time)

    def _key_shown(self, read_at: float) -> None:
        self.key_latencies_ms.append((message_clock() - read_at) * 1000)

    def key_latency_ms(self, quantile: float) -> float | None:
        """The `quantile` (0 to 1, nearest rank) of the kept key-to-screen latencies in ms; None before
        any key."""
        if not self.key_latencies_ms:
            return None
        ordered = sorted(self.key_latencies_ms)
        return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]

    def _show_banner(self, error: str | None, notice: str | None) -> None:
        text = error or notice or ""
        if text == self._banner_text:
            return
        self._banner_text = text
        banner = self.query_one("#banner", Static)
        banner.set_class(bool(text), "-shown")
        banner.set_class(error is not None, "-error")
        banner.update(text)

    # -- actions ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Pane actions wait while a form or the help is open (no second form on top of the first)."""
        if action in PANE_ACTIONS and isinstance(self.screen, ModalScreen):
            return False
        return True

    async def action_quit(self) -> None:
        await self.stop_feed()
        self.exit(0)

    def action_help(self) -> None:
        sections: list[HelpSection] = [
            ("Dashboard", self.BINDINGS),
            ("Graph", MessageGraph.BINDINGS),
            ("Peers", PeersTable.BINDINGS),
            ("Event filter", EventLog.BINDINGS),
            ("Forms", InjectScreen.BINDINGS + ConfirmScreen.BINDINGS),
            ("Anywhere", [Binding("ctrl+p", "command_palette", "Command palette"),
                          Binding("tab", "focus_next", "Next pane"),
                          Binding("escape", "minimize", "Restore a zoomed pane")]),
        ]
        self.push_screen(HelpScreen(sections))

    def action_filter(self) -> None:
        self.events.open_filter()

    def action_toggle_pause(self) -> None:
        self.events.toggle_pause()

    def action_zoom(self) -> None:
        if self.screen.maximized is not None:
            self.screen.minimize()
        elif self.focused is not None:
            self.screen.maximize(self.focused)

    def action_sort_peers(self) -> None:
        """`s` sorts the peers by the next column from any pane (the peers pane's own `s` does the same)."""
        self.peers.action_cycle_sort()

    def action_focus_pane(self, pane_id: str) -> None:
        self.query_one(f"#{pane_id}").focus()

    def on_message_graph_node_chosen(self, event: MessageGraph.NodeChosen) -> None:
        self.peers.select_peer(event.name)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter drills down: a task into its output, a peer into its node in the graph."""
        if event.data_table is self.tasks:
            self.output.focus()
        elif event.data_table is self.peers and event.row_key.value is not None:
            self.graph.select_node(event.row_key.value)

    def action_inject(self) -> None:
        models = sorted({model for peer in self.state.peers.values() for model in peer.models})
        self.push_screen(InjectScreen(models, sorted(self.state.peers)), self._start_inject)

    def _start_inject(self, request: InjectRequest | None) -> None:
        if request is not None:
            self._start_job(self._run_inject(request))

    async def _run_inject(self, request: InjectRequest) -> None:
        if request.workflow is not None:
            await self._run_workflow(request)
            return
        try:
            async for event in self._submit(request):
                self.state.apply_stream_event(event)
                if event.get("type") == "accepted":
                    self._follow_task = str(event.get("task_id"))
                elif event.get("type") == "error":
                    self.notify(f"task failed: {event.get('code')}: {event.get('message')}", severity="error")
        except (InjectUnavailable, MeshUnreachable, RequestFailed) as exc:
            self.notify(f"inject: {exc}", severity="warning")

    async def _run_workflow(self, request: InjectRequest) -> None:
        """A workflow run: its step tasks show in the graph and the tasks table like any other (the
        orchestrating node traces them); the first one is followed in the output pane."""
        try:
            async for event in self.feed.run_workflow(request):
                kind = event.get("type")
                if kind == "run":
                    self.notify(f"run {event.get('run_id')} ({event.get('workflow')}) on {event.get('orchestrator')}")
                elif kind == "task" and event.get("state") == "started" and self._follow_task is None:
                    self._follow_task = str(event.get("task_id"))
                elif kind == "done":
                    output = " ".join(str(event.get("output") or "").split())
                    self.notify(f"run {event.get('run_id')} {event.get('state')}: {output[:200]}", timeout=10)
                elif kind == "error":
                    self.notify(f"run {event.get('run_id')} failed: {event.get('message')}", severity="error")
        except (InjectUnavailable, MeshUnreachable, RequestFailed, OSError) as exc:
            self.notify(f"workflow: {exc}", severity="warning")

    def action_cancel_task(self) -> None:
        task_id = self.tasks.selected_task
        task = self.state.tasks.get(task_id) if task_id else None
        if task is None:
            self.notify("no task selected", severity="warning")
        elif task.state in FINISHED:
            self.notify(f"task {task_label(task.task_id)} has already finished", severity="warning")
        else:
            question = f"Cancel task {task_label(task.task_id)} (origin {task.origin or '?'})?"

            def answered(yes: bool | None) -> None:
                if yes:
                    self._start_job(self._run_cancel(task.task_id, task.origin))

            self.push_screen(ConfirmScreen(question), answered)

    async def _run_cancel(self, task_id: str, origin: str) -> None:
        try:
            await self._cancel(task_id, origin)
        except (InjectUnavailable, MeshUnreachable, RequestFailed) as exc:
            self.notify(f"cancel: {exc}", severity="warning")

    def _start_job(self, job: Coroutine[Any, Any, None]) -> None:
        """Run a submit or cancel on the loop; any error ends up as a notification, not a traceback."""

        async def guarded() -> None:
            try:
                await job
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("job failed")
                self.notify(f"error: {exc!r}", severity="error")

        task = asyncio.create_task(guarded())
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Inject a task", "Submit a prompt through the connected node", self.action_inject)
        yield SystemCommand("Cancel the selected task", "Asks first", self.action_cancel_task)
        yield SystemCommand("Pause / resume the event log", "Events keep being counted", self.action_toggle_pause)
        yield SystemCommand("Filter the event log", "A regex, live", self.action_filter)
        yield SystemCommand("Sort peers by the next column", "Also: click a header", self.peers.action_cycle_sort)
        yield SystemCommand("Keys", "Every key binding", self.action_help)


def run_dashboard(connect: str, *, record: str | None = None, replay: str | None = None,
                  speed: float = 1.0) -> int:
    """Run the dashboard until the user quits; 0 then. DashboardError (before any drawing) for arguments
    that cannot work: a replay file that cannot be read, a record file that cannot be written, speed <= 0,
    both record and replay."""
    if speed <= 0:
        raise DashboardError(f"--speed must be > 0, got {speed:g}")
    if record is not None and replay is not None:
        raise DashboardError("--record and --replay do not go together: a replay has nothing new to record")
    feed: Feed
    if replay is not None:
        path = Path(replay)
        if not path.is_file():
            raise DashboardError(f"replay file {replay} does not exist or is not a file")
        clock = ReplayClock()
        state = MeshState(clock)
        feed = ReplaySource(path, state, clock, speed=speed)
    else:
        state = MeshState(time.time)
        try:
            recorder = Recorder(record, connect=connect) if record is not None else None
        except OSError as exc:
            raise DashboardError(f"cannot write the record file {record}: {exc.strerror or exc}") from None
        feed = LiveSource(connect, state, recorder=recorder)
    return MeshDashboard(state, feed).run() or 0

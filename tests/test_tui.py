"""The dashboard, driven from a recording with a frozen clock (plus one run on a real echo mesh).

The replay clock moves only when a test seeks, and each test repaints by hand
(`refresh_view`), so what is on screen is the same on every run.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Input, Static

from zmqllm.client import AsyncClient
from zmqllm.tui.app import DashboardError, MeshDashboard, run_dashboard
from zmqllm.tui.confirm import ConfirmScreen
from zmqllm.tui.help import HelpScreen
from zmqllm.tui.inject import InjectRequest, InjectScreen
from zmqllm.tui.live import LiveSource
from zmqllm.tui.recording import Recorder, ReplayClock, ReplaySource
from zmqllm.tui.state import MeshState

START = 1_700_000_000.0
SIZE = (120, 40)
T1, T2 = "11111111aaaa", "22222222bbbb"


def _rows(c_state: str = "alive") -> list[dict[str, Any]]:
    """Three nodes; b serves a second model it has not loaded, a's caches held 42 % of its prompt tokens."""
    return [{"name": name, "node_id": f"id-{name}", "endpoint": f"tcp://127.0.0.1:{5555 + i}",
             "models": ["echo", "tiny"] if name == "b" else ["echo"], "loaded": ["echo"], "loading": [],
             "cache_hit": 0.42 if name == "a" else None,
             "state": c_state if name == "c" else "alive", "slots": {"busy": int(name == "b"), "total": 4},
             "queued": 0, "tok_s": 2.0 * i, "heartbeat_age_s": 0.1, "self": name == "a", "ctx": 0, "chat": True}
            for i, name in enumerate("abc")]


def _msg(t: float, type_: str, src: str, dst: str, task_id: str | None = None) -> dict[str, Any]:
    event = {"k": "msg", "ts": START + t, "type": type_, "src": src, "dst": dst, "size": 42}
    return event | ({"task_id": task_id} if task_id else {})


def _task(t: float, task_id: str, state: str, executor: str | None = None, tokens: int = 0) -> dict[str, Any]:
    return {"k": "task", "ts": START + t, "task_id": task_id, "state": state, "origin": "a", "executor": executor,
            "model": "echo", "tokens": tokens}


def _token(t: float, task_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"k": "token", "ts": START + t, "task_id": task_id, "seq": seq, "text": text}


def _peer(t: float, name: str, state: str, old: str) -> dict[str, Any]:
    return {"k": "peer", "ts": START + t, "name": name, "state": state, "old": old}


RECORDING: list[dict[str, Any] | str] = [
    {"t": 0.0, "start": START, "connect": "tcp://127.0.0.1:5555", "format": "zmqllm-dash/1"},
    {"t": 0.1, "peers": _rows()},
    {"t": 0.2, "node": "a", "dropped": 0, "events": [
        _msg(0.2, "HEARTBEAT", "a", "b"), _msg(0.2, "HEARTBEAT", "a", "c"),
        _task(0.2, T1, "routing"), _msg(0.2, "ASSIGN", "a", "b", T1), _task(0.25, T1, "streaming", "b"),
        _token(0.25, T1, 0, "Hello"), _token(0.25, T1, 1, " mesh"),
        _task(0.22, T2, "routing"), _task(0.25, T2, "streaming", "c"), _token(0.25, T2, 0, "other"),
    ]},
    {"t": 0.3, "node": "b", "dropped": 3, "events": [_msg(0.3, "TOKEN", "b", "a", T1)] * 4
        + [_msg(0.3, "HEARTBEAT", "b", "c")]},
    {"t": 1.0, "node": "a", "dropped": 0, "events": [_peer(1.0, "c", "suspect", "alive"), _token(1.0, T1, 2, "!")]},
    "this line is not JSON: replay skips it",
    {"t": 2.0, "node": "b", "dropped": 0, "events": [_peer(2.0, "c", "dead", "suspect")]},
    {"t": 2.1, "peers": _rows("dead")},
]


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "session.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in RECORDING))
    return path


class Harness:
    """An app on a paused replay: `await h.at(seconds)` seeks and repaints."""

    def __init__(self, path: Path, **app_kwargs: Any) -> None:
        self.clock = ReplayClock()
        self.state = MeshState(self.clock)
        self.feed = ReplaySource(path, self.state, self.clock, autoplay=False)
        self.app = MeshDashboard(self.state, self.feed, **app_kwargs)
        self.pilot: Pilot[int] | None = None

    async def at(self, seconds: float) -> None:
        assert self.pilot is not None
        self.feed.seek(seconds)
        self.app.refresh_view()
        await self.pilot.pause()

    def graph_text(self) -> str:
        graph = self.app.graph
        return "\n".join(graph.render_line(y).text for y in range(graph.size.height))

    def peer_cell(self, name: str, column: str) -> str:
        return str(self.app.peers.get_cell(name, column))


@pytest.fixture
def harness(recording: Path) -> Callable[..., Harness]:
    return lambda **kwargs: Harness(recording, **kwargs)


async def test_peers_appear_in_table_and_graph_with_edge_rates(harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.05)
        assert h.app.peers.row_count == 0 and "a" not in h.graph_text()
        await h.at(0.5)
        assert h.app.peers.row_count == 3
        assert [h.peer_cell(n, "state") for n in "abc"] == ["alive"] * 3
        assert h.peer_cell("b", "slots") == "1/4" and h.peer_cell("c", "endpoint") == "tcp://127.0.0.1:5557"
        graph = h.graph_text()
        assert all(re.search(rf"(^|\s){n}(\s|$)", graph, re.MULTILINE) for n in "abc"), graph
        # a-b carried HEARTBEAT, ASSIGN and 4 TOKEN in the 2 s window: 3.0/s; a-c and b-c one heartbeat: 0.5/s
        assert "3.0/s" in graph and "0.5/s" in graph, graph
        assert {(e.a, e.b): e.kind for e in h.state.edge_rates()} == {
            ("a", "b"): "token", ("a", "c"): "heartbeat", ("b", "c"): "heartbeat"}
        assert h.feed.skipped == 0
        h.app.peers.focus()
        await h.pilot.press(*"sssssss", "S")  # name → … → tok/s (a 0, b 2, c 4), then reversed
        assert [str(h.app.peers.get_row_at(i)[0]) for i in range(3)] == ["c", "b", "a"]
        assert "sorted by tok/s ▼" in str(h.app.peers.border_subtitle)


async def test_a_peer_going_dead_shows_in_table_and_graph(harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        assert "0/4 alive" in h.graph_text() and "dead" not in h.graph_text()
        await h.at(1.5)
        assert h.peer_cell("c", "state") == "suspect" and "0/4 suspect" in h.graph_text()
        await h.at(2.5)
        assert h.peer_cell("c", "state") == "dead" and "0/4 dead" in h.graph_text()
        assert h.peer_cell("a", "state") == "alive"
        assert h.feed.skipped == 1  # the line that is not JSON
        assert any("c: suspect → dead" in line for line in h.app.events.lines)


async def test_selected_task_streams_its_tokens_into_the_output_pane(harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        assert h.app.tasks.row_count == 2
        assert h.app.tasks.selected_task == T1 and h.app.output.text == "Hello mesh"  # the first one seen
        h.app.tasks.focus()
        await h.pilot.press("up")  # T2 started later: it is listed first
        await h.at(0.6)
        assert h.app.tasks.selected_task == T2 and h.app.output.text == "other"
        await h.pilot.press("down")
        await h.at(0.7)
        assert h.app.tasks.selected_task == T1 and h.app.output.text == "Hello mesh"
        await h.at(1.5)  # a later token of the selected task arrives
        assert h.app.output.text == "Hello mesh!"
        assert str(h.app.tasks.get_cell(T1, "tokens")) == "3"
        assert str(h.app.tasks.get_cell(T1, "executor")) == "b"


async def test_invalid_filter_regex_is_shown_and_a_valid_one_filters(harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        assert any("HEARTBEAT" in line for line in h.app.events.lines)
        await h.pilot.press("slash", "[", "t", "o")
        field = h.app.query_one("#trace-filter", Input)
        assert field.has_focus and field.value == "[to"
        assert field.has_class("-invalid") and "invalid regex" in str(h.app.events.border_subtitle)
        assert any("HEARTBEAT" in line for line in h.app.events.lines)  # the view is kept
        field.value = "token|assign"
        await h.pilot.pause()
        assert not field.has_class("-invalid") and "filter /token|assign/" in str(h.app.events.border_subtitle)
        lines = h.app.events.lines
        assert lines and all("TOKEN" in line or "ASSIGN" in line for line in lines), lines
        await h.pilot.press("escape")
        assert not field.display and any("HEARTBEAT" in line for line in h.app.events.lines)


async def test_pause_freezes_the_log_while_events_are_counted(harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        shown = h.app.events.lines
        await h.pilot.press("p")
        await h.at(2.5)  # a suspect and a dead peer event arrive while paused
        assert h.app.events.lines == shown
        assert h.app.events.pending == 2 and "PAUSED · 2 new" in str(h.app.events.border_subtitle)
        await h.pilot.press("p")
        await h.at(2.6)
        assert h.app.events.lines[: len(shown)] == shown and len(h.app.events.lines) == len(shown) + 2
        assert "PAUSED" not in str(h.app.events.border_subtitle)


async def test_help_lists_every_key(harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.pilot.press("question_mark")
        assert isinstance(h.app.screen, HelpScreen)
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(h.app.screen.query_one("#help-keys", Static).content)
        text = console.export_text()
        for binding in MeshDashboard.BINDINGS:
            assert binding.description in text, binding.description  # type: ignore[union-attr]
        assert "Sort peers" in text and "Command palette" in text
        await h.pilot.press("escape")
        assert not isinstance(h.app.screen, HelpScreen)


async def test_inject_form_submits_through_the_given_function(harness: Callable[..., Harness]) -> None:
    calls: list[InjectRequest] = []

    async def fake_submit(request: InjectRequest) -> AsyncIterator[dict[str, Any]]:
        calls.append(request)
        yield {"type": "accepted", "task_id": "feedfacecafe", "origin": "a"}
        for seq, word in enumerate(["once ", "upon ", "a ", "time "]):
            yield {"type": "token", "task_id": "feedfacecafe", "seq": seq, "text": word}
        yield {"type": "done", "task_id": "feedfacecafe", "executed_by": "c", "finish_reason": "length"}

    h = harness(submit=fake_submit)
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        await h.pilot.press("i")
        assert isinstance(h.app.screen, InjectScreen)
        await h.pilot.press("enter")  # an empty prompt is refused in the form
        assert isinstance(h.app.screen, InjectScreen) and not calls
        await h.pilot.press(*"Once")
        h.app.screen.query_one("#peer", Input).value = "c"
        h.app.screen.query_one("#max_tokens", Input).value = "4"
        h.app.screen.query_one("#temperature", Input).value = "0.5"
        h.app.screen.query_one("#seed", Input).value = "7"
        await h.pilot.press("ctrl+s")
        await h.pilot.pause()
        assert calls == [InjectRequest("Once", None, "c", 4, 0.5, 7)]
        assert calls[0].params() == {"temperature": 0.5, "seed": 7}
        await h.at(0.6)
        assert h.app.tasks.selected_task == "feedfacecafe"  # the injected task is followed
        assert h.app.output.text == "once upon a time "
        assert str(h.app.tasks.get_cell("feedfacecafe", "state")) == "done (length)"


async def test_cancel_asks_for_confirmation_first(harness: Callable[..., Harness]) -> None:
    cancelled: list[tuple[str, str]] = []

    async def fake_cancel(task_id: str, origin: str) -> None:
        cancelled.append((task_id, origin))

    h = harness(cancel=fake_cancel)
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        await h.pilot.press("c")
        assert isinstance(h.app.screen, ConfirmScreen) and T1[:8] in h.app.screen.question
        await h.pilot.press("n")
        assert not isinstance(h.app.screen, ConfirmScreen) and cancelled == []
        await h.pilot.press("c", "y")
        await h.pilot.pause()
        assert cancelled == [(T1, "a")]


async def test_replay_has_no_mesh_to_inject_into_and_the_layout_fits_80x24(harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=(80, 24), notifications=True) as h.pilot:
        await h.at(2.5)
        for pane in (h.app.graph, h.app.peers, h.app.tasks, h.app.output, h.app.events):
            assert pane.size.width >= 20 and pane.size.height >= 3, (pane.id, pane.size)
        assert "c 0/4 dead" in h.graph_text()
        await h.pilot.press("i", *"hi", "enter")
        await h.pilot.pause()
        assert any("no mesh" in n.message for n in h.app._notifications)
        assert not h.app.query_one("#banner").has_class("-error")


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The event log shows local times: pin the zone so snapshots match on any machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _snapshot_app(recording: Path, at: float, *inputs: str) -> tuple[MeshDashboard, Callable[[Pilot[int]], Any]]:
    """The dashboard on a paused replay at `at` seconds: a frozen clock, so every run draws the same screen."""
    h = Harness(recording)

    async def before(pilot: Pilot[int]) -> None:
        h.pilot = pilot
        await h.at(at)
        if inputs:
            await pilot.press(*inputs)
            for field in pilot.app.screen.query(Input):
                field.cursor_blink = False
            await pilot.pause()

    return h.app, before


def test_main_screen_snapshot(utc: None, recording: Path, snap_compare: Callable[..., bool]) -> None:
    """Graph with edge rates, peers, two streaming tasks with the first one's output, and the trace."""
    app, before = _snapshot_app(recording, 0.5)
    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_inject_form_snapshot(utc: None, recording: Path, snap_compare: Callable[..., bool]) -> None:
    """The inject form over the main screen, with a prompt typed in."""
    app, before = _snapshot_app(recording, 2.5, "i", *"Once upon a time")
    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_recorder_output_replays_into_the_same_state(tmp_path: Path) -> None:
    path, tick = tmp_path / "rec.jsonl", iter([10.0, 10.5, 11.0, 11.25])
    recorder = Recorder(path, connect="tcp://x:1", clock=lambda: next(tick), wall=lambda: START)
    recorder.peers(_rows())
    recorder.batch({"node": "a", "events": [_msg(1.0, "HEARTBEAT", "a", "b")], "dropped": 2})
    recorder.batch({"node": "b", "events": [_peer(1.25, "c", "dead", "alive")], "dropped": 0})
    recorder.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["t"] for line in lines] == [0.0, 0.5, 1.0, 1.25] and lines[0]["start"] == START
    clock = ReplayClock()
    state = MeshState(clock)
    replay = ReplaySource(path, state, clock, autoplay=False)
    replay.start()
    replay.seek(1.1)
    assert clock() == START + 1.1 and state.dropped_total == 2 and state.peers["c"].state == "alive"
    replay.seek(5)
    assert replay.finished and state.peers["c"].state == "dead" and state.notice == "replay finished"


def test_run_dashboard_refuses_arguments_that_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(DashboardError, match="does not exist"):
        run_dashboard("tcp://127.0.0.1:1", replay=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DashboardError, match="speed"):
        run_dashboard("tcp://127.0.0.1:1", replay=str(tmp_path), speed=0)
    with pytest.raises(DashboardError, match="do not go together"):
        run_dashboard("tcp://127.0.0.1:1", replay=str(tmp_path), record=str(tmp_path / "r.jsonl"))
    with pytest.raises(DashboardError, match="record file"):
        run_dashboard("tcp://127.0.0.1:1", record=str(tmp_path / "no" / "such" / "dir.jsonl"))


async def _until(pilot: Pilot[int], predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


async def test_live_echo_mesh_peers_inject_and_a_killed_node(spawn: Callable[..., Any]) -> None:
    a = spawn("a", heartbeat=0.2)
    b = spawn("b", "--peer", a.endpoint, heartbeat=0.2)
    c = spawn("c", "--peer", a.endpoint, heartbeat=0.2)
    state = MeshState(time.time)
    app = MeshDashboard(state, LiveSource(a.endpoint, state))

    def cell(name: str, column: str) -> str:
        return str(app.peers.get_cell(name, column)) if name in app.peers.rows else ""

    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: [cell(n, "state") for n in "abc"] == ["alive"] * 3, 15, "three alive peers")
        await _until(pilot, lambda: set(app.graph.nodes) == {"a", "b", "c"}, 5, "three nodes in the graph")
        await _until(pilot, lambda: any(e.rate > 0 for e in state.edge_rates()), 5, "heartbeat edges")
        await pilot.press("i", *"one two three four")
        app.screen.query_one("#max_tokens", Input).value = "8"
        await pilot.press("enter")
        await _until(pilot, lambda: app.output.text == "one two three four " * 2, 10, "the injected task's tokens")
        assert app.tasks.selected_task is not None and state.tasks[app.tasks.selected_task].state == "done"
        # a long task, cancelled from the dashboard: c, then y
        await pilot.press("i", *"long")
        app.screen.query_one("#max_tokens", Input).value = "100000"
        await pilot.press("enter")
        await _until(pilot, lambda: len(state.tasks) == 2 and app.tasks.selected_task is not None
                     and state.tasks[app.tasks.selected_task].tokens > 3, 10, "the long task streaming")
        long_task = state.tasks[app.tasks.selected_task]
        app.tasks.focus()
        await pilot.press("c", "y")
        await _until(pilot, lambda: long_task.state == "done" and long_task.finish_reason == "cancelled", 5,
                     "the long task cancelled")
        async with AsyncClient(a.endpoint) as client:
            assert (await client.status())["tasks"]["routing"] == 0
        c.kill()
        await _until(pilot, lambda: cell("c", "state") == "dead" and app.graph.nodes["c"].state == "dead", 15,
                     "c dead in table and graph")
        assert cell("b", "state") == "alive" and not app.query_one("#banner").has_class("-error")
    assert b.proc.poll() is None


async def test_inject_runs_a_workflow_whose_fan_out_shows_as_tasks(spawn: Callable[..., Any], tmp_path: Path) -> None:
    a = spawn("a", heartbeat=0.2)
    spawn("b", "--peer", a.endpoint, heartbeat=0.2)
    spec = tmp_path / "fan.toml"
    spec.write_text('[[steps]]\nname = "ask"\nprompt = "say {input}"\nmax_tokens = 6\nfan_out = 2\n'
                    'distinct_peers = true\nmerge = "concat"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nname = "ask"\nprompt = "{nope}"\n')
    state = MeshState(time.time)
    app = MeshDashboard(state, LiveSource(a.endpoint, state))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await _until(pilot, lambda: len(state.peers) == 2, 15, "two peers")
        await pilot.press("i", *"hello")
        app.screen.query_one("#workflow", Input).value = str(bad)
        await pilot.press("enter")
        error = str(app.screen.query_one("#inject-error", Static).render())
        assert isinstance(app.screen, InjectScreen) and "step 'ask'" in error and "{nope}" in error, error
        app.screen.query_one("#workflow", Input).value = str(spec)
        await pilot.press("enter")
        await _until(pilot, lambda: any("done: say hello" in n.message for n in app._notifications), 15,
                     "the run's end notified")

        def branches() -> list[Any]:
            return [t for t in state.tasks.values() if ".ask#" in t.task_id]

        await _until(pilot, lambda: len(branches()) == 2 and all(t.state == "done" for t in branches()), 5,
                     "both branches done in the tasks table (from the orchestrator's trace)")
        assert {t.executor for t in branches()} == {"a", "b"}


# --- the first hour's polish: filter, columns, step keys, help, sort ----------------------------------------

async def test_clearing_the_filter_shows_the_newest_events_and_keeps_following(
        harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        beats = [_msg(0.4, "HEARTBEAT", "a", "b") for _ in range(300)]
        h.state.apply_batch({"node": "a", "dropped": 0, "events": beats})
        h.app.refresh_view()
        await h.pilot.pause()
        log = h.app.query_one("#trace-log")
        assert log.max_scroll_y > 200 and log.scroll_y == log.max_scroll_y
        await h.pilot.press("slash")  # the filter input takes a row from the log
        await h.at(1.5)
        assert log.scroll_y == log.max_scroll_y and "suspect" in h.app.events.lines[-1]
        await h.pilot.press(*"TOKEN")  # a few lines: the view is short
        await h.pilot.press("escape")  # all of them again, and the row back
        await h.pilot.pause()
        assert log.scroll_y == log.max_scroll_y > 200
        await h.at(2.5)  # new events arrive: the view follows them
        assert log.scroll_y == log.max_scroll_y and "dead" in h.app.events.lines[-1]


async def test_task_states_are_never_cut_and_workflow_steps_show_their_key(
        harness: Callable[..., Harness]) -> None:
    from zmqllm.tui.tasks import task_label

    assert task_label("3f2a9c1d0b7e.critique.a1b2c3") == "critique" and task_label(T1) == T1[:8]
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        step = "3f2a9c1d0b7e.draft.a1b2c3"
        h.state.apply_stream_event({"type": "accepted", "task_id": step, "origin": "a"})
        h.state.apply_stream_event({"type": "done", "task_id": step, "executed_by": "b",
                                    "finish_reason": "cancelled"})
        h.app.refresh_view()
        await h.pilot.pause()
        assert str(h.app.tasks.get_cell(step, "task")) == "draft"
        assert str(h.app.tasks.get_cell(step, "state")) == "done (cancelled)"
        assert h.app.tasks.columns["state"].get_render_width(h.app.tasks) >= len("done (cancelled)")


async def test_help_says_how_to_close_it_and_s_sorts_peers_from_any_pane(
        harness: Callable[..., Harness]) -> None:
    h = harness()
    async with h.app.run_test(size=SIZE) as h.pilot:
        await h.at(0.5)
        await h.pilot.press("question_mark")
        title = str(h.app.screen.query_one(".modal-title", Static).content)
        assert "Esc, q or ? closes this" in title
        await h.pilot.press("escape")
        await h.pilot.press("3")  # the tasks pane has focus
        assert h.app.peers.sort_column == 0
        await h.pilot.press("s")
        assert h.app.peers.sort_column == 1 and "sorted by" in str(h.app.peers.border_subtitle)

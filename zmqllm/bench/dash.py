"""`zmqllm bench dash`: what the dashboard keeps up with, and what it costs the mesh it watches.

ingest: the dashboard, headless at 120x40 with its real 10 Hz repaint, fed the EVENTS frames three
nodes would flush every FLUSH_INTERVAL_S (origin a, executors b and c in turn, 40-token echo tasks:
the events a real echo mesh reports, shapes captured from one) at fixed target rates. The frames are
encoded before the clock starts, then decoded and folded on the app's loop as LiveSource does
(`protocol.decode_frame`, then `fold_batch`): only the socket read is left out. Keys are posted as
the terminal driver posts them, at a person's pace and at any phase of the repaint; their latency is
the app's own probe (the key read to the screen refreshed after it). A late flush is delivered at
once, so the rate ingested falls below the target only when the loop cannot keep up.

impact: tokens/s of one echo stream (unlimited rate) from B through origin A to a client, median of
`runs` runs with nothing watching, then as many with a subscriber that throws the events away
unread (what tracing costs the nodes alone), then as many with a headless dashboard subscribed to
both nodes in its own process: same daemons, same run. Figures on one machine drift from day to
day; only the ratios of the same run mean anything.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import zmq
from textual import events

from zmqllm.core import protocol
from zmqllm.bench.mesh import _mesh_run, _wait_for_peer, daemons
from zmqllm.core.events import BUFFER_LIMIT, FLUSH_INTERVAL_S, LEASE_S
from zmqllm.tui.app import MeshDashboard
from zmqllm.tui.live import POLL_INTERVAL_S, LiveSource, fold_batch
from zmqllm.tui.recording import InjectUnavailable
from zmqllm.tui.state import MeshState

SIZE = (120, 40)
RATES = (0, 5_000, 10_000, 20_000, 40_000)
"""Target events/s of the ingest series; 0 is the baseline: the same app with nothing arriving."""
WARMUP_S = 1.0
"""Fed before measuring: the task list and the trace fill up, caches warm."""
MEASURE_S = 5.0
KEYS = ("p", "p", "2", "s", "3", "down", "down", "up")
"""Pause and resume the log, sort the peers, move in the tasks table (2 and 3 focus those panes)."""
KEY_GAP_S = (0.05, 0.25)
"""Pause between two keys, drawn uniformly: a person's pace, at any phase of the 10 Hz repaint."""
KEY_SETTLE_S = 2.0
"""How long the last keys may take to show once the window has closed."""
TASK_TOKENS = 40
IMPACT_TOKENS = 100_000
"""Tokens a run: an echo stream at unlimited rate does ~90 k tok/s here, so 20 000 would last ~0.2 s,
shorter than the dashboard's peer poll and too short for a steady figure."""
WARMUP_TOKENS = 5_000
READY_TIMEOUT_S = 30.0
GOAL_RATE = 20_000
GOAL_REPAINT_HZ = 9.0
GOAL_KEY_P95_MS = 50.0
GOAL_RATIO = 0.98

_NODES = ("a", "b", "c")
_CLIENT = "client:dashbench"
_WORDS = ("once ", "upon ", "a ", "time ")
_PEER_ROWS = [{"name": name, "endpoint": f"tcp://127.0.0.1:{5555 + i}", "models": ["echo"], "state": "alive",
               "slots": {"busy": int(name != "a"), "total": 4}, "queued": 0, "tok_s": 0.0, "heartbeat_age_s": 0.1,
               "self": name == "a"} for i, name in enumerate(_NODES)]


# -- ingest: synthetic flushes of three nodes ---------------------------------------------------------

def _msg(type_: str, src: str, dst: str, task_id: str, size: int) -> dict[str, Any]:
    return {"k": "msg", "type": type_, "src": src, "dst": dst, "size": size, "task_id": task_id}


def _task(task_id: str, state: str, executor: str | None, tokens: int, **extra: str) -> dict[str, Any]:
    return {"k": "task", "task_id": task_id, "state": state, "origin": "a", "executor": executor,
            "model": "echo" if executor else None, "tokens": tokens, **extra}


def _echo_mesh_events() -> Iterator[tuple[str, dict[str, Any]]]:
    """(reporting node, event), endlessly, in the order an echo mesh reports them: a task submitted to
    a, run by b or c in turn, streamed back to the client: 3 events a token, 10 a task besides
    (heartbeats left out)."""
    for number in itertools.count():
        task_id, executor = f"{number:032x}", "bc"[number % 2]
        yield "a", _msg("SUBMIT", _CLIENT, "a", task_id, 127)
        yield "a", _msg("ACCEPTED", "a", _CLIENT, task_id, 95)
        yield "a", _task(task_id, "routing", None, 0)
        yield "a", _msg("ASSIGN", "a", executor, task_id, 141)
        yield "a", _task(task_id, "assigned", executor, 0)
        yield executor, _msg("ACCEPT", executor, "a", task_id, 84)
        for seq in range(TASK_TOKENS):
            yield executor, _msg("TOKEN", executor, "a", task_id, 100)
            if seq == 0:
                yield "a", _task(task_id, "streaming", executor, 1)
            yield "a", {"k": "token", "task_id": task_id, "seq": seq, "text": _WORDS[seq % len(_WORDS)]}
            yield "a", _msg("TOKEN", "a", _CLIENT, task_id, 100)
        yield executor, _msg("DONE", executor, "a", task_id, 235)
        yield "a", _task(task_id, "done", executor, TASK_TOKENS, finish_reason="length")
        yield "a", _msg("DONE", "a", _CLIENT, task_id, 253)


def _flushes(rate: int, seconds: float, epoch: float) -> list[list[bytes]]:
    """Encoded EVENTS frames, one list (a frame per node) per flush: `rate` events/s for `seconds`,
    stamped from `epoch` on."""
    per_flush = round(rate * FLUSH_INTERVAL_S)
    source = _echo_mesh_events()
    flushes = []
    for number in range(math.ceil(seconds / FLUSH_INTERVAL_S)):
        ts = round(epoch + number * FLUSH_INTERVAL_S, 4)
        by_node: dict[str, list[dict[str, Any]]] = {name: [] for name in _NODES}
        for node, event in itertools.islice(source, per_flush):
            event["ts"] = ts
            by_node[node].append(event)
        flushes.append([protocol.encode(protocol.make("EVENTS", src=node, id=number, node=node, events=batch,
                                                      dropped=0))
                        for node, batch in by_node.items() if batch])
    return flushes


class SyntheticFeed:
    """A dashboard feed that delivers pre-encoded flushes on their schedule, and the peer list once a
    poll interval. Its state's clock starts at `epoch` when delivery starts, as the events' stamps do."""

    def __init__(self, flushes: list[list[bytes]], epoch: float) -> None:
        self.flushes = flushes
        self.epoch = epoch
        self.state = MeshState(self.clock)
        self._began: float | None = None
        self._job: asyncio.Task[None] | None = None

    @property
    def description(self) -> str:
        return "synthetic feed"

    def clock(self) -> float:
        return self.epoch + (0.0 if self._began is None else time.perf_counter() - self._began)

    def start(self) -> None:
        self._job = asyncio.create_task(self._deliver())

    async def stop(self) -> None:
        if self._job is not None:
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)

    def submit(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        raise InjectUnavailable("a synthetic feed has no mesh to run tasks on")

    async def cancel(self, task_id: str, origin: str) -> None:
        raise InjectUnavailable("a synthetic feed has no mesh to cancel tasks on")

    async def _deliver(self) -> None:
        self._began = time.perf_counter()
        polls_every = round(POLL_INTERVAL_S / FLUSH_INTERVAL_S)
        for number, frames in enumerate(self.flushes):
            delay = self._began + number * FLUSH_INTERVAL_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if number % polls_every == 0:
                self.state.apply_peers(_PEER_ROWS)
            for frame in frames:
                for message in protocol.decode_frame(frame):
                    await fold_batch(self.state, dict(message.fields))


async def _ingest_at(rate: int, pace: random.Random) -> dict[str, Any]:
    """One rate: the dashboard fed for WARMUP_S, then measured for MEASURE_S while keys come in."""
    epoch = time.time()
    feed = SyntheticFeed(_flushes(rate, WARMUP_S + MEASURE_S + KEY_SETTLE_S, epoch), epoch)
    state = feed.state
    app = MeshDashboard(state, feed)
    async with app.run_test(size=SIZE):
        await asyncio.sleep(WARMUP_S)
        app.key_latencies_ms.clear()
        events_before, repaints_before, cpu_before = state.events_total, app.repaints, time.process_time()
        started = time.perf_counter()
        presses = 0
        while time.perf_counter() - started < MEASURE_S:
            key = KEYS[presses % len(KEYS)]
            app.post_message(events.Key(key, key if len(key) == 1 else None))
            presses += 1
            await asyncio.sleep(pace.uniform(*KEY_GAP_S))
        elapsed = time.perf_counter() - started
        ingested, repaints = state.events_total - events_before, app.repaints - repaints_before
        cpu = time.process_time() - cpu_before
        settle_by = time.perf_counter() + KEY_SETTLE_S
        while len(app.key_latencies_ms) < presses and time.perf_counter() < settle_by:
            await asyncio.sleep(0.02)
        shown = len(app.key_latencies_ms)
        p50, p95 = app.key_latency_ms(0.5), app.key_latency_ms(0.95)
    return {"target_events_s": rate, "events_s": round(ingested / elapsed),
            "repaint_hz": round(repaints / elapsed, 1), "key_p50_ms": _rounded_ms(p50), "key_p95_ms": _rounded_ms(p95),
            "keys": presses, "keys_shown": shown, "cpu": round(cpu / elapsed, 2)}


async def _ingest_series(rates: tuple[int, ...]) -> list[dict[str, Any]]:
    pace = random.Random(7)
    return [await _ingest_at(rate, pace) for rate in rates]


# -- impact: a daemon's throughput with and without a dashboard watching ---------------------------------

def _dashboard_process(connect: str, reports: Any, stop: Any) -> None:
    """A headless dashboard on the mesh at `connect`, in its own process: reports "ready" once events of
    both nodes have arrived, then what it ingested once `stop` is set."""
    asyncio.run(_headless_dashboard(connect, reports, stop))


async def _headless_dashboard(connect: str, reports: Any, stop: Any) -> None:
    state = MeshState(time.time)
    app = MeshDashboard(state, LiveSource(connect, state))
    async with app.run_test(size=SIZE):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not {node for _, node, _ in state.trace} >= {"a", "b"}:
            if time.monotonic() > deadline:
                reports.put({"ready": False})
                return
            await asyncio.sleep(0.05)
        reports.put({"ready": True})
        events_before = state.events_total
        while not stop.is_set():
            await asyncio.sleep(0.05)
        reports.put({"events": state.events_total - events_before, "dropped": state.dropped_total})


def _discarding_subscriber(endpoints: list[str], reports: Any, stop: Any) -> None:
    """Subscribed to every node at `endpoints`, throwing the batches away undecoded: what tracing costs the
    nodes, without a dashboard's work beside them. Reports "ready" once every node has answered."""
    ctx = zmq.Context()
    poller = zmq.Poller()
    sockets = []
    for endpoint in endpoints:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
        sockets.append(sock)
    subscribe = protocol.encode(protocol.make("SUBSCRIBE", src="dashbench", id=1))
    answered: set[zmq.Socket[bytes]] = set()
    renew_at, frames = 0.0, 0
    try:
        while not stop.is_set():
            if time.monotonic() >= renew_at:
                for sock in sockets:
                    sock.send(subscribe)
                renew_at = time.monotonic() + LEASE_S / 3
            for sock, _ in poller.poll(100):
                sock.recv()
                frames += 1
                if sock not in answered:
                    answered.add(sock)
                    if len(answered) == len(sockets):
                        reports.put({"ready": True})
        for sock in sockets:  # else the nodes keep buffering for us until the lease lapses
            sock.send(protocol.encode(protocol.make("UNSUBSCRIBE", src="dashbench", id=2)))
        reports.put({"frames": frames})
    finally:
        ctx.destroy(linger=100)


def _attached(spawn: Any, target: Any, args: tuple[Any, ...], origin: str, tokens: int, runs: int
              ) -> tuple[list[float], dict[str, Any]]:
    """tok/s of `runs` runs while the process `target(*args, reports, stop)` watches, and its report."""
    reports, stop = spawn.Queue(), spawn.Event()
    watcher = spawn.Process(target=target, args=(*args, reports, stop), daemon=True)
    watcher.start()
    try:
        if not reports.get(timeout=READY_TIMEOUT_S + 10)["ready"]:
            raise RuntimeError(f"{target.__name__} never heard from both nodes")
        asyncio.run(_mesh_run(origin, WARMUP_TOKENS))
        rates = [asyncio.run(_mesh_run(origin, tokens)) for _ in range(runs)]
        stop.set()
        seen: dict[str, Any] = reports.get(timeout=READY_TIMEOUT_S)
    finally:
        stop.set()
        watcher.join(10)
        if watcher.is_alive():
            watcher.kill()
            watcher.join()
    return rates, seen


def _impact(tokens: int, runs: int) -> dict[str, Any]:
    """tok/s without anything watching, with a subscriber that discards the events, and with a
    dashboard: same daemons, one after the other (each watcher unsubscribes when it stops)."""
    spawn = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as home, daemons(home) as start:
        _, a_endpoint = start("a")
        _, b_endpoint = start("b", "--peer", a_endpoint)
        asyncio.run(_wait_for_peer(a_endpoint, "b"))
        asyncio.run(_mesh_run(a_endpoint, WARMUP_TOKENS))
        alone = [asyncio.run(_mesh_run(a_endpoint, tokens)) for _ in range(runs)]
        discarded, _ = _attached(spawn, _discarding_subscriber, ([a_endpoint, b_endpoint],), a_endpoint,
                                 tokens, runs)
        watched, seen = _attached(spawn, _dashboard_process, (a_endpoint,), a_endpoint, tokens, runs)
    streamed = tokens * runs + WARMUP_TOKENS
    return {"alone": alone, "discarded": discarded, "watched": watched,
            "events_per_token": seen["events"] / streamed, "dropped": seen["dropped"]}


def run_dash(runs: int = 3, tokens: int = IMPACT_TOKENS, rates: tuple[int, ...] = RATES) -> dict[str, Any]:
    """The ingest series at `rates`, then the impact on a daemon's throughput: `runs` runs of `tokens`
    tokens each, alone, with a discarding subscriber, with a dashboard. About a minute at runs=5."""
    series = asyncio.run(_ingest_series(rates))
    impact = _impact(tokens, runs)
    medians = {key: statistics.median(impact[key]) for key in ("alone", "discarded", "watched")}
    return {
        "bench": "dash",
        "ingest": series,
        "tokens_per_run": tokens,
        "runs": runs,
        "alone_tok_s": _rounded(impact["alone"]),
        "discarding_tok_s": _rounded(impact["discarded"]),
        "dashboard_tok_s": _rounded(impact["watched"]),
        "alone_median_tok_s": round(medians["alone"]),
        "discarding_median_tok_s": round(medians["discarded"]),
        "dashboard_median_tok_s": round(medians["watched"]),
        "ratio": round(medians["watched"] / medians["alone"], 3),
        "discarding_ratio": round(medians["discarded"] / medians["alone"], 3),
        "dashboard_events_per_token": round(impact["events_per_token"], 2),
        "dashboard_dropped": impact["dropped"],
        "summary": _summary(series, impact, medians, tokens, runs),
    }


def _summary(series: list[dict[str, Any]], impact: dict[str, Any], medians: dict[str, float], tokens: int,
             runs: int) -> str:
    lines = [f"dash ingest: headless {SIZE[0]}x{SIZE[1]}, flushes of 3 nodes running {TASK_TOKENS}-token echo "
             f"tasks, a key every {KEY_GAP_S[0]:g}-{KEY_GAP_S[1]:g} s, {MEASURE_S:g} s measured a rate",
             f"  (goal: {GOAL_RATE:,} events/s ingested, repaint >= {GOAL_REPAINT_HZ:g} Hz, key p95 < "
             f"{GOAL_KEY_P95_MS:g} ms)"]
    for row in series:
        lines.append(f"  target {row['target_events_s']:>6,}/s: ingested {row['events_s']:>6,}/s, "
                     f"repaint {row['repaint_hz']:4.1f} Hz, key-to-screen p50 {_ms(row['key_p50_ms'])} "
                     f"p95 {_ms(row['key_p95_ms'])} ({row['keys_shown']}/{row['keys']} keys), cpu {row['cpu']:.0%}")
    alone = medians["alone"]
    lines += [f"dash impact, {tokens} tokens x {runs} runs (B -> origin A -> client, echo unlimited)",
              f"  nothing watching:          median {alone:,.0f} tok/s  {_rounded(impact['alone'])}",
              f"  subscriber, events unread: median {medians['discarded']:,.0f} tok/s  "
              f"{_rounded(impact['discarded'])}",
              f"  dashboard (own process):   median {medians['watched']:,.0f} tok/s  {_rounded(impact['watched'])}",
              f"    it took {impact['events_per_token']:.2f} events a token; the nodes dropped "
              f"{impact['dropped']:,} past their {BUFFER_LIMIT:,}-event buffers",
              f"  ratio dashboard/nothing: {medians['watched'] / alone:.3f}  (goal >= {GOAL_RATIO:g}); "
              f"subscriber/nothing: {medians['discarded'] / alone:.3f}"]
    return "\n".join(lines)


def _rounded(values: list[float]) -> list[int]:
    return [round(value) for value in values]


def _rounded_ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float | None) -> str:
    return "   -   " if value is None else f"{value:5.1f} ms"

"""What the dashboard knows about the mesh, as plain data: no widgets, no sockets.

Feeds (a live mesh or a replay file) fold what arrives into a `MeshState` with
constant work per event — counters, ring buffers, a dict update — and the app's
~10 Hz timer reads it to update widgets. Rendering is thereby decoupled from the
event rate: a flood of 20 k events/s costs dict increments, not repaints. Time
comes from the injected `clock` (unix seconds), so a replay with a frozen clock
renders the same every time.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

log = logging.getLogger(__name__)

KINDS = ("heartbeat", "task", "token", "error")
"""Edge traffic kinds, least to most significant (an edge is coloured by the most significant one it carries)."""
_HEARTBEAT, _TASK, _TOKEN, _ERROR = range(4)
_KIND_OF_TYPE = {"HEARTBEAT": _HEARTBEAT, "HELLO": _HEARTBEAT, "WELCOME": _HEARTBEAT, "PEERS": _HEARTBEAT,
                 "BYE": _HEARTBEAT, "TOKEN": _TOKEN, "ERROR": _ERROR, "REJECT": _ERROR}
RATE_WINDOW_S = 2.0
"""Edge rates are messages counted over this many seconds."""
BUCKET_S = 0.25
"""Edge counts are kept in buckets this long (a ring of RATE_WINDOW_S / BUCKET_S per edge)."""
TRACE_LIMIT = 5_000
"""Trace events kept for the event log (and for re-filtering it)."""
MAX_TASKS = 200
"""Tasks kept; past it the oldest finished ones are forgotten."""
MAX_OUTPUT_CHARS = 64_000
"""Output text kept per task."""
SPARK_SAMPLES = 16
"""tok/s samples kept per peer for its sparkline (one per peers poll, ~1 s)."""
FINISHED = ("done", "failed")
UNKNOWN = "unknown"
"""The state of a peer the connected node does not list."""


@dataclass(slots=True)
class PeerInfo:
    """One node as last reported; `version` grows on every change so widgets skip unchanged rows."""

    name: str
    endpoint: str = ""
    models: tuple[str, ...] = ()
    loaded: tuple[str, ...] | None = None
    """Of `models`, those loaded now (None: all)."""
    loading: tuple[str, ...] = ()
    cache_hit: float | None = None
    """Share of the node's prompt tokens its caches held."""
    state: str = "alive"
    busy: int = 0
    total: int = 0
    queued: int = 0
    tok_s: float = 0.0
    heartbeat_age_s: float | None = None
    is_self: bool = False
    state_ts: float = 0.0
    tok_history: deque[float] = field(default_factory=lambda: deque(maxlen=SPARK_SAMPLES))
    version: int = 0


@dataclass(slots=True)
class TaskInfo:
    """One task as its origin reports it, plus the output text seen so far."""

    task_id: str
    state: str = "routing"
    origin: str = ""
    executor: str | None = None
    model: str | None = None
    tokens: int = 0
    started: float = 0.0
    ended: float | None = None
    finish_reason: str = ""
    error: str = ""
    chunks: list[str] = field(default_factory=list)
    chars: int = 0
    next_seq: int = 0
    version: int = 0

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def elapsed(self, now: float) -> float:
        return max(0.0, (self.ended if self.ended is not None else now) - self.started)


@dataclass(frozen=True, slots=True)
class EdgeRate:
    """Traffic between two nodes over the last RATE_WINDOW_S: `a` < `b` by name;
    `forward` is the share of it that went a → b."""

    a: str
    b: str
    rate: float
    kind: str
    forward: float


class EdgeCounts:
    """Per-bucket message counts of one node pair: [bucket, heartbeat, task, token, error, a→b, b→a]."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()

    def add(self, bucket: int, kind: int, forward: bool) -> None:
        if not self.buckets or self.buckets[-1][0] != bucket:
            self.buckets.append([bucket, 0, 0, 0, 0, 0, 0])
        row = self.buckets[-1]
        row[1 + kind] += 1
        row[5 if forward else 6] += 1

    def totals(self, oldest_bucket: int) -> list[int]:
        """Sums over buckets not older than `oldest_bucket` (older ones are forgotten)."""
        while self.buckets and self.buckets[0][0] < oldest_bucket:
            self.buckets.popleft()
        sums = [0] * 6
        for row in self.buckets:
            for i in range(6):
                sums[i] += row[i + 1]
        return sums


def _is_node_name(name: Any) -> TypeGuard[str]:
    """Node names, not clients (`client:…`) nor endpoints of peers a node has not named yet."""
    return isinstance(name, str) and bool(name) and not name.startswith("client:") and "://" not in name


class MeshState:
    """Everything the dashboard shows, folded from peer rows and trace batches."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.peers: dict[str, PeerInfo] = {}
        self.tasks: OrderedDict[str, TaskInfo] = OrderedDict()
        self.trace: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=TRACE_LIMIT)
        self.trace_seq = 0
        self.events_total = 0
        self.dropped_total = 0
        self.malformed = 0
        self.edges: dict[tuple[str, str], EdgeCounts] = {}
        self.link_error: str | None = None
        """Why the mesh cannot be reached now (the app shows it in a banner); None while it can."""
        self.notice: str | None = None
        """Something to say that is not an error (a replay that has finished)."""

    # -- peers ---------------------------------------------------------------------------

    def peer(self, name: str) -> PeerInfo:
        """The peer called `name`, created on first sight."""
        info = self.peers.get(name)
        if info is None:
            info = self.peers[name] = PeerInfo(name)
        return info

    def apply_peers(self, rows: list[dict[str, Any]], now: float | None = None) -> None:
        """A `peers()` listing: the polled node's view, authoritative at `now`. Known peers it does not
        list (a restarted node that never met them) become `unknown`."""
        now = self.clock() if now is None else now
        listed = {row.get("name") for row in rows}
        for info in self.peers.values():
            if info.name not in listed and info.state != UNKNOWN and now >= info.state_ts:
                info.state, info.state_ts = UNKNOWN, now
                info.version += 1
        for row in rows:
            name = row.get("name")
            if not _is_node_name(name):
                continue
            info = self.peer(name)
            slots = row.get("slots") or {}
            info.endpoint = str(row.get("endpoint", info.endpoint))
            info.models = tuple(row.get("models") or ())
            loaded = row.get("loaded")
            info.loaded = None if loaded is None else tuple(loaded)
            info.loading = tuple(row.get("loading") or ())
            hit = row.get("cache_hit")
            info.cache_hit = float(hit) if isinstance(hit, (int, float)) else None
            if now >= info.state_ts:
                info.state, info.state_ts = str(row.get("state", info.state)), now
            info.busy, info.total = int(slots.get("busy", 0)), int(slots.get("total", 0))
            info.queued = int(row.get("queued", 0))
            info.tok_s = float(row.get("tok_s", 0.0))
            age = row.get("heartbeat_age_s")
            info.heartbeat_age_s = None if age is None else float(age)
            info.is_self = bool(row.get("self", False))
            info.tok_history.append(info.tok_s)
            info.version += 1  # the sparkline moves on every poll

    # -- trace batches ---------------------------------------------------------------------

    def apply_batch(self, batch: dict[str, Any], now: float | None = None) -> None:
        """One EVENTS batch from one node: `{"node", "events", "dropped"}`."""
        now = self.clock() if now is None else now
        node = batch.get("node")
        if _is_node_name(node):
            self.peer(node)
        self.dropped_total += int(batch.get("dropped") or 0)
        bucket = int(now // BUCKET_S)
        for event in batch.get("events") or ():
            self.events_total += 1
            try:
                self._fold(str(node), event, bucket)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                self.malformed += 1
                log.debug("malformed event from %s: %r (%s)", node, event, exc)

    def _fold(self, node: str, event: dict[str, Any], bucket: int) -> None:
        kind = event["k"]
        if kind == "msg":
            self._remember(node, event)
            src, dst, peers = event["src"], event["dst"], self.peers
            if src != dst and (src in peers or _is_node_name(src)) and (dst in peers or _is_node_name(dst)):
                self.peer(src), self.peer(dst)
                pair = (src, dst) if src < dst else (dst, src)
                counts = self.edges.get(pair)
                if counts is None:
                    counts = self.edges[pair] = EdgeCounts()
                counts.add(bucket, _KIND_OF_TYPE.get(event["type"], _TASK), src == pair[0])
        elif kind == "peer":
            self._remember(node, event)
            info = self.peer(event["name"])
            ts = float(event["ts"])
            if ts >= info.state_ts:
                info.state, info.state_ts = str(event["state"]), ts
                info.version += 1
        elif kind == "task":
            self._remember(node, event)
            self._fold_task(event)
        elif kind == "token":
            self._fold_token(event["task_id"], int(event["seq"]), str(event["text"]), float(event["ts"]))

    def _remember(self, node: str, event: dict[str, Any]) -> None:
        self.trace_seq += 1
        self.trace.append((self.trace_seq, node, event))

    # -- tasks -----------------------------------------------------------------------------

    def task(self, task_id: str, ts: float) -> TaskInfo:
        """The task `task_id`, created on first sight (forgetting the oldest finished ones past MAX_TASKS)."""
        info = self.tasks.get(task_id)
        if info is None:
            info = self.tasks[task_id] = TaskInfo(task_id, started=ts)
            if len(self.tasks) > MAX_TASKS:
                for old_id, old in self.tasks.items():
                    if old.state in FINISHED:
                        del self.tasks[old_id]
                        break
        return info

    def _fold_task(self, event: dict[str, Any]) -> None:
        ts = float(event["ts"])
        info = self.task(str(event["task_id"]), ts)
        if info.state not in FINISHED:
            info.state = str(event["state"])
        info.origin = str(event.get("origin") or info.origin)
        info.executor = event.get("executor") or info.executor
        info.model = event.get("model") or info.model
        info.tokens = max(info.tokens, int(event.get("tokens") or 0))
        info.finish_reason = str(event.get("finish_reason") or info.finish_reason)
        info.error = str(event.get("error") or info.error)
        if info.state in FINISHED and info.ended is None:
            info.ended = ts
        info.version += 1

    def _fold_token(self, task_id: str, seq: int, text: str, ts: float) -> None:
        """A token, from the trace or from our own submit stream: each seq counts once."""
        info = self.task(task_id, ts)
        if seq < info.next_seq:
            return
        info.next_seq = seq + 1
        info.tokens = max(info.tokens, info.next_seq)
        if info.state in ("routing", "assigned"):
            info.state = "streaming"
        if info.chars < MAX_OUTPUT_CHARS:
            info.chunks.append(text)
            info.chars += len(text)
        info.version += 1

    def apply_stream_event(self, event: dict[str, Any]) -> None:
        """An event of a task this dashboard submitted (`accepted`/`token`/`done`/`error`)."""
        now = self.clock()
        kind, task_id = event.get("type"), str(event.get("task_id", ""))
        if not task_id:
            return
        if kind == "token":
            self._fold_token(task_id, int(event.get("seq", 0)), str(event.get("text", "")), now)
            return
        info = self.task(task_id, now)
        if kind == "accepted":
            info.origin = str(event.get("origin") or info.origin)
        elif kind in ("done", "error") and info.state not in FINISHED:
            info.state = "done" if kind == "done" else "failed"
            info.ended = now
            info.executor = event.get("executed_by") or info.executor
            info.finish_reason = str(event.get("finish_reason") or "")
            if kind == "error":
                info.error = f"{event.get('code', 'error')}: {event.get('message', '')}"
        info.version += 1

    # -- views -----------------------------------------------------------------------------

    def edge_rates(self, now: float | None = None) -> list[EdgeRate]:
        """Each node pair that ever exchanged messages, with its current rate."""
        now = self.clock() if now is None else now
        oldest = int(now // BUCKET_S) - int(RATE_WINDOW_S / BUCKET_S) + 1
        rates = []
        for (a, b), counts in self.edges.items():
            sums = counts.totals(oldest)
            total = sum(sums[:4])
            kind = next((KINDS[i] for i in (_ERROR, _TOKEN, _TASK) if sums[i]), KINDS[_HEARTBEAT])
            rates.append(EdgeRate(a, b, total / RATE_WINDOW_S, kind, sums[4] / total if total else 0.5))
        return rates

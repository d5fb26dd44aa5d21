"""What a node counts about itself, as plain numbers: messages and bytes by type, tasks by outcome, tokens,
failovers, and latency histograms. Pure (the clock's readings are passed in); `node/metrics.py` turns them
into Prometheus's text format only when scraped, so counting costs a dictionary update on the hot path.

Every label comes from a closed set (message types, error codes, finish reasons, the models a node serves),
never from what a client sent: a scraper's series stay bounded however the mesh is used.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from zmqllm.core.protocol import ERROR_CODES, MESSAGE_FIELDS

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds for request and first-token latencies (Prometheus adds +Inf)."""
TOKEN_GAP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds for the time between two tokens of a stream."""
FINISH_REASONS = frozenset({"stop", "length", "cancelled"})
OTHER = "other"
"""The label of anything outside a closed set."""


@dataclass
class Histogram:
    """A cumulative-on-read histogram: `counts[i]` holds observations in (bounds[i-1], bounds[i]], the last
    slot those above every bound."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) as Prometheus's `le` buckets, +Inf last."""
        out, running = [], 0
        for bound, count in zip([*map(_le, self.bounds), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


def message_type(type_: str) -> str:
    return type_ if type_ in MESSAGE_FIELDS else OTHER


def task_outcome(final_type: str, fields: dict[str, Any]) -> str:
    """A finished task's outcome label: its finish reason when DONE, its error code when ERROR."""
    if final_type == "DONE":
        reason = str(fields.get("finish_reason") or "stop")
        return reason if reason in FINISH_REASONS else OTHER
    code = str(fields.get("code") or "")
    return code if code in ERROR_CODES else OTHER


@dataclass
class NodeStats:
    """A node's counters since it started."""

    messages_in: Counter[str] = field(default_factory=Counter)
    bytes_in: Counter[str] = field(default_factory=Counter)
    messages_out: Counter[str] = field(default_factory=Counter)
    bytes_out: Counter[str] = field(default_factory=Counter)
    tasks: Counter[str] = field(default_factory=Counter)
    """Tasks originated here that ended, by outcome."""
    prompt_tokens: Counter[str] = field(default_factory=Counter)
    generated_tokens: Counter[str] = field(default_factory=Counter)
    cached_prompt_tokens: Counter[str] = field(default_factory=Counter)
    """Of `prompt_tokens`, those a cache held (not computed again)."""
    """Tokens of the tasks originated here, by the model that ran them."""
    failovers: int = 0
    resumed_tokens: int = 0
    """Tokens already delivered when a task failed over (the next executor resumes after them)."""
    first_token_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    token_gap_s: Histogram = field(default_factory=lambda: Histogram(TOKEN_GAP_BUCKETS_S))
    task_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))

    def received(self, types: Iterable[str], frame_bytes: int) -> None:
        """One frame in: a batch frame's bytes are shared out evenly among its messages."""
        kinds = [message_type(type_) for type_ in types]
        for kind in kinds:
            self.messages_in[kind] += 1
            self.bytes_in[kind] += frame_bytes // len(kinds)

    def sent(self, type_: str, payload_bytes: int) -> None:
        kind = message_type(type_)
        self.messages_out[kind] += 1
        self.bytes_out[kind] += payload_bytes

    def token(self, since_start: float, since_last: float | None) -> None:
        """A task's token reached its origin: the first one's delay, or the gap since the one before."""
        if since_last is None:
            self.first_token_s.observe(since_start)
        else:
            self.token_gap_s.observe(since_last)

    def failed_over(self, delivered: int) -> None:
        self.failovers += 1
        self.resumed_tokens += delivered

    def task_ended(self, final_type: str, fields: dict[str, Any], model: str | None, duration_s: float) -> None:
        self.tasks[task_outcome(final_type, fields)] += 1
        self.task_s.observe(duration_s)
        usage = fields.get("usage") or {}
        if final_type == "DONE" and model is not None:
            self.prompt_tokens[model] += int(usage.get("prompt_tokens") or 0)
            self.generated_tokens[model] += int(usage.get("completion_tokens") or 0)
            self.cached_prompt_tokens[model] += int(usage.get("cached_tokens") or 0)

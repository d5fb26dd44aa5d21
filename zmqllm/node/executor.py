"""Runs tasks on this node's engine: `slots` at once, a bounded queue behind them.

Whoever hands a task in (the node, for its own clients or for an origin that
assigned it) gets its tokens and its end through callbacks, always on the event
loop's thread. A full queue refuses at once (`busy`), so an origin can go
elsewhere rather than wait blind.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from zmqllm.engines.base import Engine, EngineError, GenerationRequest, GenerationResult, TokenChunk
from zmqllm.core.membership import Load
from zmqllm.core.prefix import CacheRecord, block_hashes, prompt_text

SPEED_MIN_TOKENS = 8
"""Requests shorter than this say little about decode speed (their first token's wait dominates)."""
SPEED_WEIGHT = 0.2
"""The moving average's weight of the newest request."""

log = logging.getLogger(__name__)

JobKey = tuple[str, str]
"""(origin node id, task id): task ids are chosen by clients, so two origins may use the same one."""
OnToken = Callable[[TokenChunk], None]
OnEnd = Callable[[GenerationResult | EngineError, dict[str, float]], None]
"""Called once per task with the result (or the engine's error) and its timings."""


@dataclass
class _Job:
    key: JobKey
    request: GenerationRequest
    on_token: OnToken
    on_end: OnEnd
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)


class Executor:
    """Admission, slots and cancellation in front of one engine."""

    def __init__(self, engine: Engine, queue_limit: int) -> None:
        self.engine = engine
        self.queue_limit = queue_limit
        self._queue: deque[_Job] = deque()
        self._running: dict[JobKey, tuple[_Job, asyncio.Task[None]]] = {}
        self._tokens_since_sample = 0
        self._sample_at = time.monotonic()
        self._tok_s = 0.0
        self.completed = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.speed = 0.0
        """Decode tokens/s of one request here, a moving average (0 until a request of a few tokens ran)."""
        self.cache = CacheRecord()
        """The prompts the engine's caches hold, as heartbeats advertise them (cache-aware routing)."""

    def submit(self, key: JobKey, request: GenerationRequest, on_token: OnToken, on_end: OnEnd) -> bool:
        """Start or queue a task; False when the queue is full (answer `busy`)."""
        if key in self._running or any(j.key == key for j in self._queue):
            return True
        if len(self._running) >= self.engine.slots and len(self._queue) >= self.queue_limit:
            return False
        self._queue.append(_Job(key, request, on_token, on_end))
        self._start_ready()
        return True

    def cancel(self, key: JobKey) -> bool:
        """Stop a running task within one token, or drop it from the queue
        (ending it as cancelled). Returns whether the task was here."""
        if key in self._running:
            self._running[key][0].cancel.set()
            return True
        for job in self._queue:
            if job.key == key:
                self._queue.remove(job)
                job.on_end(GenerationResult("cancelled", 0, 0), {"ttft_ms": 0.0, "total_ms": 0.0, "decode_tok_s": 0.0})
                return True
        return False

    def load(self) -> Load:
        """Current work and the decode rate since the last call (for heartbeats)."""
        now = time.monotonic()
        elapsed = now - self._sample_at
        if elapsed >= 0.05:
            self._tok_s = self._tokens_since_sample / elapsed
            self._tokens_since_sample, self._sample_at = 0, now
        return Load(len(self._running), len(self._queue), self.engine.slots, self._tok_s,
                    self.cache.advertised(self.engine.prefix_capacity), self.prompt_tokens, self.cached_tokens,
                    self.speed)

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def close(self) -> None:
        """Cancel everything and wait for running generations to stop."""
        for job in list(self._queue):
            self.cancel(job.key)
        for job, _ in self._running.values():
            job.cancel.set()
        tasks = [task for _, task in self._running.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start_ready(self) -> None:
        while self._queue and len(self._running) < self.engine.slots:
            job = self._queue.popleft()
            task = asyncio.get_running_loop().create_task(self._run(job), name=f"task-{job.key[1]}")
            self._running[job.key] = (job, task)

    async def _run(self, job: _Job) -> None:
        started = time.monotonic()
        first_token_at: list[float] = []

        answer: list[str] = []

        def emit(chunk: TokenChunk) -> None:
            if not first_token_at:
                first_token_at.append(time.monotonic())
            self._tokens_since_sample += 1
            answer.append(chunk.text)
            job.on_token(chunk)

        outcome: GenerationResult | EngineError
        try:
            outcome = await self.engine.generate(job.request, emit, job.cancel)
        except EngineError as exc:
            outcome = exc
        except Exception as exc:  # an engine bug must end the task, not the daemon
            log.exception("engine failed on task %s", job.key[1])
            outcome = EngineError("engine_failed", f"engine failed: {type(exc).__name__}: {exc}")
        finally:
            self._running.pop(job.key, None)
            self.completed += 1
        ended = time.monotonic()
        if isinstance(outcome, GenerationResult):
            self.prompt_tokens += outcome.prompt_tokens
            self.cached_tokens += outcome.cached_tokens
            if outcome.finish_reason != "cancelled":
                self._remember_prompt(job.request, "".join(answer))
        timings = _timings(started, first_token_at[0] if first_token_at else None, ended, outcome)
        if isinstance(outcome, GenerationResult) and outcome.completion_tokens >= SPEED_MIN_TOKENS:
            rate = timings["decode_tok_s"]
            self.speed = rate if not self.speed else (1 - SPEED_WEIGHT) * self.speed + SPEED_WEIGHT * rate
        try:
            job.on_end(outcome, timings)
        finally:
            self._start_ready()


    def _remember_prompt(self, request: GenerationRequest, answer: str) -> None:
        """The engine's cache now holds this prompt and its answer: advertise it (a resumed task's replayed
        tokens were not emitted here, so its answer is left out: the prompt alone is what is sure)."""
        model = request.model or (self.engine.models[0] if len(self.engine.models) == 1 else "")
        capacity = self.engine.prefix_capacity(model) if model else 0
        if capacity:
            text = prompt_text(request.prompt, request.messages, None if request.resume_ids else answer)
            self.cache.record(model, block_hashes(text), capacity)


def _timings(
    started: float, first_token: float | None, ended: float, outcome: GenerationResult | EngineError
) -> dict[str, float]:
    tokens = outcome.completion_tokens if isinstance(outcome, GenerationResult) else 0
    decode_s = ended - first_token if first_token is not None else 0.0
    rate = (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0
    return {
        "ttft_ms": round((first_token - started) * 1000, 3) if first_token is not None else 0.0,
        "total_ms": round((ended - started) * 1000, 3),
        "decode_tok_s": round(rate, 2),
    }

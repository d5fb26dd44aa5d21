"""BatchedLlamaEngine: up to `slots` generations at once in one llama.cpp context.

Continuous batching: one worker thread owns the model and loops over decode
steps. A step holds one token of every sequence past its prompt plus chunks of
new prompts (at most `prefill_chunk` tokens, so a long prompt never stalls the
running streams). A request joins at the first step after a slot frees (lowest
free slot whose cells share the longest prefix with its prompt, at least
`MIN_REUSE_TOKENS`, else the lowest free slot); a finished or cancelled sequence leaves at once, and its slot
keeps its cells until a request takes the slot: one sharing a prefix with them
(a chat's next turn, the same system prompt) starts after it (`cached_tokens`). A step's tokens (and results) cross back to the event loop
together, with one `loop.call_soon_threadsafe` (`StepOutbox`), the result
through a future.

Promised: each sequence samples with its own parameters and seed; sequences
never see each other's KV cells; a greedy output is repeatable for the same
schedule (same slot, same batch widths step by step); a failover resume
prefills the prompt, then replays the delivered ids one per step as they were
first decoded. Not promised: equality with a solo run (llama.cpp's CPU kernels
round differently at other batch widths; see `batched_decode`). Sampled tokens
become chunks through `TokenText`, exactly as in `LlamaEngine`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zmqllm.engines.base import (
    Emit, EngineError, FinishReason, GenerationRequest, GenerationResult,
)
from zmqllm.engines.batched_decode import (
    BatchContext, Generation, Job, SamplerChain, Sequence, SlotEvent, SlotState, check_fits, load_model, plan_step,
)
from zmqllm.engines.bundled import resolve_model_path
from zmqllm.engines.handoff import StepOutbox, TokenHandoff
from zmqllm.engines.llama_base import LlamaModelEngine
from zmqllm.engines.llama_api import is_end_of_generation, tokenize_prompt, vocab_size
from zmqllm.engines.llama_states import shared_prefix
from zmqllm.engines.llama_text import chat_renderer
from zmqllm.engines.sampling import TokenText, parse_sampling

log = logging.getLogger(__name__)

PREFILL_CHUNK_TOKENS = 128
"""Prompt tokens decoded per step next to the running sequences: on the 2-core dev
machine a step then takes ≈ 0.2 s instead of ≈ 2 s for a whole 1,500-token prompt."""
MIN_REUSE_TOKENS = 16
"""Shared tokens below which a slot's cells are not reused (a shared BOS and a word are not worth the slot's
other cached prefix, and fresh slots keep the schedule repeatable: lowest free slot first)."""
TRACE_EVENTS = 256
"""Slot events kept for `trace()` (the oldest are dropped)."""


class BatchedLlamaEngine(LlamaModelEngine):
    """A llama-cpp-python model serving `slots` requests at once. Construct, then
    `await load()` (or `await BatchedLlamaEngine.open(**settings)`), then
    `generate` (concurrently), then `close`. `n_ctx` is the context per slot.
    Flash attention is on by default: llama-server's "auto" turns it on for
    CPU and GPU alike, and at 8 streams on the 2-core dev machine it cuts a
    step from ≈ 46 to ≈ 43 ms (173 → 186 tok/s)."""

    def __init__(self, *, model: str, model_name: str | None = None, cache_dir: Path, n_ctx: int = 2048,
                 n_threads: int | None = None, n_gpu_layers: int = 0, n_batch: int = 512, flash_attn: bool = True,
                 chat_format: str | None = None, verbose: bool = False, slots: int = 4,
                 prefill_chunk: int = PREFILL_CHUNK_TOKENS, prefix_cache: bool = True) -> None:
        if not 1 <= slots < n_batch or prefill_chunk < 1:
            raise ValueError(f"need 1 <= slots < n_batch (a step holds a token of every slot) and prefill_chunk >= 1; "
                             f"got slots={slots}, n_batch={n_batch}, prefill_chunk={prefill_chunk}")
        super().__init__(model=model, model_name=model_name, cache_dir=cache_dir, n_ctx=n_ctx, n_threads=n_threads,
                         n_gpu_layers=n_gpu_layers, n_batch=n_batch, flash_attn=flash_attn,
                         chat_format=chat_format, verbose=verbose)
        self.slots = slots
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = prefix_cache
        """Whether a free slot keeps its last sequence's cells for a request sharing its prefix."""
        self._held: list[list[int]] = [[] for _ in range(slots)]
        """Per slot, the tokens its cells hold while it is free (worker thread only)."""
        self.steps = 0  # decode steps run so far
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[Job] = deque()
        self._slots: list[Generation | None] = [None] * slots
        self._trace: deque[SlotEvent] = deque(maxlen=TRACE_EVENTS)
        self._holds = 0
        self._serial = 0
        self._closed = False
        self._serving = False
        self._failure = ""
        self._thread: threading.Thread | None = None
        self._outbox = StepOutbox()  # the worker's; flushed at the end of every loop turn
        # owned by the worker thread once loaded
        self._lc: Any = None
        self._batch_ctx: BatchContext | None = None
        self._ctx_limit = 0
        self._n_vocab = 0

    # --- observability (any thread) --------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._serving

    @property
    def active(self) -> int:
        """Sequences holding a slot now."""
        with self._lock:
            return sum(run is not None for run in self._slots)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        with self._lock:
            return len(self._pending)

    @property
    def submitted(self) -> int:
        """`generate` calls accepted so far (the last one's serial)."""
        with self._lock:
            return self._serial

    def slot_states(self) -> list[SlotState]:
        """What each slot holds now."""
        with self._lock:
            return [SlotState(i, "free") if run is None else
                    SlotState(i, run.seq.phase, run.job.serial, len(run.seq.prompt), run.seq.completion_tokens)
                    for i, run in enumerate(self._slots)]

    def trace(self) -> list[SlotEvent]:
        """The last `TRACE_EVENTS` admissions and frees, oldest first."""
        with self._lock:
            return list(self._trace)

    @contextlib.contextmanager
    def paused_admission(self) -> Iterator[None]:
        """Hold new requests back while the block runs (running ones go on); the
        requests queued meanwhile join together at the next step, in call order,
        lowest free slots first."""
        with self._wake:
            self._holds += 1
        try:
            yield
        finally:
            with self._wake:
                self._holds -= 1
                self._wake.notify()

    # --- the event loop's side -------------------------------------------------

    async def load(self) -> None:
        """Resolve and check the model, load it and create the batch context, all
        on the engine's worker thread, which then serves. Raises
        `EngineError("engine_failed", ...)` with one line saying what is wrong."""
        if self._closed:
            raise EngineError("engine_failed", "engine is closed")
        if self._serving:
            return
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(target=self._worker, args=(ready,), name="zmqllm-batched", daemon=True)
        thread.start()
        await asyncio.wrap_future(ready)
        self._thread = thread

    async def generate(self, request: GenerationRequest, emit: Emit, cancel: threading.Event) -> GenerationResult:
        if self._closed:
            raise EngineError("engine_failed", "engine is closed")
        if not self._serving:
            raise EngineError("engine_failed", self._failure or "model is not loaded (call load() first)")
        if request.max_tokens < 0:
            raise EngineError("bad_request", f"max_tokens must be >= 0, got {request.max_tokens}")
        sampling = parse_sampling(request.params)
        request = await self._as_completion(request)
        loop = asyncio.get_running_loop()
        handoff = TokenHandoff(loop, emit, cancel, self._outbox)
        done: asyncio.Future[GenerationResult | EngineError] = loop.create_future()

        def settle(outcome: GenerationResult | EngineError) -> None:
            if not done.done():
                done.set_result(outcome)

        def resolve(outcome: GenerationResult | EngineError) -> None:  # worker thread
            self._outbox.post(loop, settle, outcome)

        job = Job(request, sampling, tuple(s for s in request.stop if s), handoff.deliver, handoff.stopped, resolve)
        with self._wake:
            if not self._serving:
                raise EngineError("engine_failed", self._failure or "engine is closed")
            self._serial += 1
            job.serial = self._serial
            self._pending.append(job)
            self._wake.notify()
        try:
            outcome = await done
        except asyncio.CancelledError:
            handoff.abort.set()  # the worker drops the job within one step
            raise
        # `settle` reaches the loop after every chunk delivered before it
        # (the outbox keeps order), so all emits have run by now.
        handoff.raise_emit_error()
        if isinstance(outcome, EngineError):
            raise outcome
        return outcome

    async def close(self) -> None:
        """Stop the worker (running and queued requests fail with
        `engine_failed`) and free the context, the batch and the model."""
        if self._closed:
            return
        self._closed = True
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # --- the worker thread -------------------------------------------------------

    def _worker(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            self._load_blocking()
        except BaseException as exc:
            self._free_model()
            ready.set_exception(exc)
            return
        self._serving = True
        ready.set_result(None)
        reason = "engine is closed"
        try:
            self._serve()
        except Exception as exc:  # a bug must fail the requests, not leave them hanging
            log.exception("batched engine worker failed")
            reason = self._failure = f"engine failed: {type(exc).__name__}: {exc}"
        finally:
            self._shutdown(reason)
            self._outbox.flush()

    def _load_blocking(self) -> None:
        t0 = time.perf_counter()
        path = resolve_model_path(self.spec, self.cache_dir)
        self._lc, self._llm, self._batch_ctx = load_model(
            path, slots=self.slots, ctx_per_slot=self.n_ctx, n_batch=self.n_batch, n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers, flash_attn=self.flash_attn, verbose=self.verbose)
        self._ctx_limit = min(self.n_ctx, self._batch_ctx.ctx_per_seq)
        self._n_vocab = vocab_size(self._llm)
        self._render_chat = chat_renderer(self.spec, self.chat_format, self._llm)
        self.chat = self._render_chat is not None
        self.model_path = path
        self.load_s = time.perf_counter() - t0
        log.info("loaded %s (%s) in %.2f s: %d slots of %d tokens", self.models[0], path, self.load_s,
                 self.slots, self._ctx_limit)

    def _serve(self) -> None:
        while True:
            self._outbox.flush()  # what the last turn delivered or resolved, before waiting
            with self._wake:
                while not self._closed and not (any(self._slots) or (self._pending and not self._holds)):
                    self._wake.wait()
                if self._closed:
                    return
                gone = [job for job in self._pending if job.stopped()]
                for job in gone:
                    self._pending.remove(job)
            for job in gone:  # cancelled while queued
                job.resolve(GenerationResult("cancelled", 0, 0))
            for run in [r for r in self._slots if r is not None]:
                if run.job.stopped():
                    self._end(run, "cancelled")
            self._admit_pending()
            if any(self._slots):
                self._step()

    def _admit_pending(self) -> None:
        while True:
            with self._lock:
                free = [i for i, run in enumerate(self._slots) if run is None]
                if self._holds or not self._pending or not free:
                    return
                job = self._pending.popleft()
            run = self._start(job, free)
            if run is not None:
                with self._lock:
                    self._slots[run.seq.slot] = run
                    self._trace.append(SlotEvent(self.steps, "admit", run.seq.slot, job.serial))

    def _start(self, job: Job, free: list[int]) -> Generation | None:
        """Tokenise and check a request and give it the free slot whose cells share the longest prefix with its
        prompt (the lowest when none does); None when it ends before taking a slot."""
        request = job.request
        try:
            prompt = tokenize_prompt(self._llm, request.prompt)
            resume = list(request.resume_ids)
            n_prompt, limit = len(prompt), self._ctx_limit
            check_fits(n_prompt, resume, limit, self._n_vocab)
        except EngineError as exc:
            job.resolve(exc)
            return None
        max_new = min(request.max_tokens - len(resume), limit - n_prompt - len(resume))
        if max_new <= 0 or job.stopped():
            job.resolve(GenerationResult("cancelled" if job.stopped() else "length", n_prompt, 0))
            return None
        slot, keep = self._best_slot(free, prompt)
        chain = SamplerChain.build(self._lc, job.sampling, self._n_vocab, job.sampling.seed_to_use())
        for token in resume:
            chain.accept(token)
        # detokenize() drops a leading space when the text starts with BOS, and
        # create_completion starts an empty prompt's completion with BOS.
        text = TokenText(job.stops, bos_id=self._llm.token_bos(),
                         strip_space=request.prompt == "" and not resume)
        return Generation(job, Sequence(slot, job.serial, prompt, resume, fed=keep, cached=keep), chain, text, max_new)

    def _best_slot(self, free: list[int], prompt: list[int]) -> tuple[int, int]:
        """The free slot to take and how many of its cells to keep (at least the prompt's last token is computed
        again: its logits start the sampling). The others keep what they hold for later requests."""
        best, keep = free[0], 0
        if self.prefix_cache:
            for slot in free:
                shared = min(shared_prefix(self._held[slot], prompt), len(prompt) - 1)
                if shared >= MIN_REUSE_TOKENS and shared > keep:
                    best, keep = slot, shared
        assert self._batch_ctx is not None
        if not self._batch_ctx.trim_slot(best, keep):
            keep = 0
        self._held[best] = []
        return best, keep

    def _step(self) -> None:
        """One decode step: the planned rows, then a token sampled for every
        sequence whose logits are for a new token."""
        if self._batch_ctx is None:
            raise EngineError("engine_failed", "the model is not loaded")
        running = {run.seq.slot: run for run in self._slots if run is not None}
        rows = plan_step([run.seq for run in running.values()], self._batch_ctx.n_batch, self.prefill_chunk)
        try:
            last = self._batch_ctx.decode(rows)
        except Exception as exc:
            log.error("llama.cpp decode failed for slots %s: %s", [row.slot for row in rows], exc)
            for row in rows:
                self._end(running[row.slot], EngineError("engine_failed", f"llama.cpp decode failed: {exc}"))
            return
        self.steps += 1
        for row, index in zip(rows, last, strict=True):
            run = running[row.slot]
            run.seq.fed += len(row.tokens)
            if row.logits and run.seq.ready_to_sample():
                token = run.chain.sample(self._batch_ctx.ctx, index)
                finish = run.take(token, is_end_of_generation(self._llm, token), self._piece)
                if finish is not None:
                    self._end(run, finish)

    def _piece(self, token: int) -> bytes:
        return self._llm.detokenize([token])  # type: ignore[no-any-return]

    def _end(self, run: Generation, outcome: FinishReason | EngineError) -> None:
        """Free the slot at once, then finish the request."""
        slot = run.seq.slot
        with self._lock:
            self._slots[slot] = None
            self._trace.append(SlotEvent(self.steps, "free", slot, run.job.serial,
                                         outcome if isinstance(outcome, str) else "error"))
        if self._batch_ctx is not None:
            if self.prefix_cache and not isinstance(outcome, EngineError):
                self._held[slot] = run.seq.in_cache()
            else:
                self._batch_ctx.free_slot(slot)
                self._held[slot] = []
        run.finish(outcome)

    def prefix_capacity(self, model: str) -> int:
        """Each slot keeps its last sequence's cells while free."""
        return self.slots if self.prefix_cache else 0

    def _shutdown(self, reason: str) -> None:
        with self._lock:
            self._serving = False
            pending = list(self._pending)
            self._pending.clear()
        for job in pending:
            job.resolve(EngineError("engine_failed", reason))
        for run in [r for r in self._slots if r is not None]:
            self._end(run, EngineError("engine_failed", f"{reason} (while generating)"))
        self._free_model()

    def _free_model(self) -> None:
        if self._batch_ctx is not None:
            self._batch_ctx.close()
            self._batch_ctx = None
        llm = self._take_model()
        if llm is not None:
            llm.close()


__all__ = ["BatchedLlamaEngine", "PREFILL_CHUNK_TOKENS", "SlotEvent", "SlotState"]

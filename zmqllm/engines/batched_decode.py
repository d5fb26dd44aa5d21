"""The worker side of `BatchedLlamaEngine`: loading, one low-level context whose
KV cache keeps one stream per slot, one `llama_batch`, a sampler chain and a
`Generation` per request, and `plan_step`, which decides what the next decode
step holds (`plan_step` and `Sequence` are plain Python, no llama.cpp).

Facts this relies on (llama.cpp as vendored by llama-cpp-python 0.3.36):
- `kv_unified=False` gives every sequence a KV stream of its own (context
  `n_ctx / n_seq_max` tokens): a sequence never reads another's cells, and
  removing a sequence empties its stream, so the next occupant of a slot sees
  the same cell layout as the first one did.
- With one stream per sequence, `llama_decode` cuts a batch into ubatches of
  *consecutive* sequence ids with equal token counts ("sequential equal split").
  So rows go into the batch in slot order, and slots are handed out lowest
  first: a hole in the slot ids costs one more ubatch per step (slots 0, 2, 3
  take ≈ 15 % longer a step than slots 0, 1, 2 on the 2-core dev machine).
- A sequence's floats depend on the width of the ubatches it is decoded in (CPU
  kernels group rows), not on the other rows' content: a greedy output is
  repeatable for the same schedule, and never promised equal to a solo run.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from zmqllm.engines.base import EngineError, FinishReason, GenerationRequest, GenerationResult, TokenChunk
from zmqllm.engines.llama import check_gguf
from zmqllm.engines.llama_log import collect_load_errors, install_quiet_logging
from zmqllm.engines.sampling import Sampling, TokenText

PENALTY_LAST_N = 64
"""Tokens the repeat penalty looks back over: `Llama`'s `last_n_tokens_size` default."""
_TOKENIZER_CTX = 64
"""The `Llama` object is kept for its weights, tokenizer and chat template only;
its own context is never decoded, so it is kept small."""

SlotPhase = Literal["free", "prefill", "replay", "decode"]


@dataclass(frozen=True)
class SlotEvent:
    """A sequence entering or leaving a slot. `step` is the first decode step
    the change applies to, so a slot freed for step n and taken at step n was
    reused without a gap. `serial` numbers `generate` calls from 1."""

    step: int
    kind: Literal["admit", "free"]
    slot: int
    serial: int
    reason: str = ""  # for "free": the finish reason, or "error"


@dataclass(frozen=True)
class SlotState:
    slot: int
    phase: SlotPhase
    serial: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Row:
    """One sequence's part of a decode step: `tokens` at positions `pos`,
    `pos + 1`, ...; `logits` asks for the logits of the last of them."""

    slot: int
    tokens: tuple[int, ...]
    pos: int
    logits: bool


@dataclass(eq=False)
class Sequence:
    """A generation's place in the KV cache: its prompt is fed in chunks, then
    the replayed `resume` ids one per step, then each sampled token."""

    slot: int
    serial: int
    prompt: list[int]
    resume: list[int]
    fed: int = 0  # tokens in the KV cache (= position of the next one)
    sampled: int | None = None  # the token to decode next, once sampling began
    completion_tokens: int = 0  # new tokens kept (an end-of-generation token excluded)

    @property
    def phase(self) -> SlotPhase:
        if self.fed < len(self.prompt):
            return "prefill"
        if self.fed < len(self.prompt) + len(self.resume):
            return "replay"
        return "decode"

    def row(self, prefill_budget: int) -> Row | None:
        """This sequence's tokens for the next step: a prompt chunk of at most
        `prefill_budget` tokens (None when that is 0), else one token."""
        n_prompt = len(self.prompt)
        if self.fed < n_prompt:
            if prefill_budget <= 0:
                return None
            end = min(n_prompt, self.fed + prefill_budget)
            # the last prompt token always yields logits, as when first decoded
            return Row(self.slot, tuple(self.prompt[self.fed:end]), self.fed, end == n_prompt)
        if self.fed < n_prompt + len(self.resume):
            return Row(self.slot, (self.resume[self.fed - n_prompt],), self.fed, True)
        assert self.sampled is not None
        return Row(self.slot, (self.sampled,), self.fed, True)

    def ready_to_sample(self) -> bool:
        """After a step: whether the logits just computed are for a new token."""
        return self.fed >= len(self.prompt) + len(self.resume)


def plan_step(sequences: Seq[Sequence], max_tokens: int, prefill_chunk: int) -> list[Row]:
    """The rows of the next decode step, in slot order: one token for every
    sequence past its prompt, plus prompt chunks sharing at most `prefill_chunk`
    tokens (and what `max_tokens` leaves), handed to the oldest requests first.
    A running sequence therefore never waits for a whole long prompt."""
    running = [s for s in sequences if s.phase != "prefill"]
    budget = min(prefill_chunk, max_tokens - len(running))
    rows: dict[int, Row] = {}
    for seq in sorted(sequences, key=lambda s: s.serial):
        prefilling = seq.phase == "prefill"
        row = seq.row(budget)
        if row is None:
            continue
        if prefilling:
            budget -= len(row.tokens)
        rows[seq.slot] = row
    return [rows[slot] for slot in sorted(rows)]


@dataclass(eq=False)
class Job:
    """One `generate` call as the worker sees it; `deliver` and `resolve` hand
    chunks and the end to the event loop and are safe to call from any thread."""

    request: GenerationRequest
    sampling: Sampling
    stops: tuple[str, ...]
    deliver: Callable[[TokenChunk], None]
    stopped: Callable[[], bool]
    resolve: Callable[[GenerationResult | EngineError], None]
    serial: int = 0


@dataclass(eq=False)
class Generation:
    """A job holding a slot: its place in the KV cache, its sampler chain, and
    its text (handled exactly as `LlamaEngine` handles sampled tokens)."""

    job: Job
    seq: Sequence
    chain: SamplerChain
    text: TokenText
    max_new: int

    def take(self, token: int, is_eog: bool, piece: Callable[[int], bytes]) -> FinishReason | None:
        """A sampled token; returns why the generation ends, or None to go on."""
        if is_eog:
            return "stop"
        self.seq.completion_tokens += 1
        self.text.push(token, piece(token))
        last_chunk = self.text.take_stopped()
        if last_chunk is not None:
            self.job.deliver(last_chunk)
            return "stop"
        if self.seq.completion_tokens >= self.max_new:
            return "length"
        chunk = self.text.take_ready()
        if chunk is not None:
            self.job.deliver(chunk)
        self.seq.sampled = token
        return None

    def finish(self, outcome: FinishReason | EngineError) -> None:
        """End the request (its slot already freed): what is held back ends the
        stream (a dangling partial character is dropped), then the result."""
        self.chain.free()
        if isinstance(outcome, EngineError):
            self.job.resolve(outcome)
            return
        rest = self.text.take_rest()
        if rest is not None:
            self.job.deliver(rest)
        self.job.resolve(GenerationResult(outcome, len(self.seq.prompt), self.seq.completion_tokens))


@dataclass(eq=False)
class SamplerChain:
    """One sequence's llama.cpp sampler chain, built as `Llama._init_sampler`
    builds it for the parameters `LlamaEngine` passes (no mirostat, no grammar,
    typical_p 1, no frequency/presence penalty): penalties, then greedy at
    temperature 0, else top-k, typical, top-p, min-p, temperature, dist(seed).

    Greedy without a repeat penalty is the first maximum of the logits (the
    penalties sampler does nothing at 1.0, and the greedy sampler keeps the
    first of equal maxima, as `argmax` does). That case skips the chain, which
    copies all 262 k logits into a candidate array per call: ≈ 4.5 % of a
    batched step at 8 streams on the dev machine."""

    lc: Any
    ptr: Any = field(default=None)
    argmax_vocab: int = 0  # > 0: sample by argmax over this many logits

    @classmethod
    def build(cls, lc: Any, sampling: Sampling, n_vocab: int, seed: int) -> SamplerChain:
        chain = cls(lc, lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params()))
        if sampling.temperature == 0.0 and sampling.repeat_penalty == 1.0:
            chain.argmax_vocab = n_vocab
        chain._add(lc.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0))
        if sampling.temperature == 0.0:
            chain._add(lc.llama_sampler_init_greedy())
            return chain
        for sampler in (
            lc.llama_sampler_init_top_k(sampling.top_k),
            lc.llama_sampler_init_typical(1.0, 1),
            lc.llama_sampler_init_top_p(sampling.top_p, 1),
            lc.llama_sampler_init_min_p(sampling.min_p, 1),
            lc.llama_sampler_init_temp(sampling.temperature),
            lc.llama_sampler_init_dist(seed),
        ):
            chain._add(sampler)
        return chain

    def _add(self, sampler: Any) -> None:
        self.lc.llama_sampler_chain_add(self.ptr, sampler)  # the chain owns it now

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch row `index` (and accept the token)."""
        if self.argmax_vocab:
            logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(ctx, index), shape=(self.argmax_vocab,))
            return int(logits.argmax())
        return int(self.lc.llama_sampler_sample(self.ptr, ctx, index))

    def accept(self, token: int) -> None:
        """Record a token decoded without sampling (a replayed one), so the
        repeat penalty sees the same history as the uninterrupted run."""
        self.lc.llama_sampler_accept(self.ptr, token)

    def free(self) -> None:
        if self.ptr is not None:
            self.lc.llama_sampler_free(self.ptr)
            self.ptr = None


class BatchContext:
    """A llama.cpp context for `slots` sequences of `ctx_per_slot` tokens each,
    sharing the weights of an already loaded model, and the batch it decodes."""

    def __init__(self, lc: Any, model: Any, *, ctx_per_slot: int, slots: int, n_batch: int,
                 n_threads: int, n_threads_batch: int, flash_attn: bool) -> None:
        self.lc = lc
        params = lc.llama_context_default_params()
        params.n_ctx = ctx_per_slot * slots
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)  # as `Llama` sets it
        params.n_seq_max = slots
        params.kv_unified = False
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        # the same setting as `Llama`'s flash_attn flag (the low-level default is "auto")
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lc.llama_init_from_model(model, params)
        if not self.ctx:
            raise EngineError("engine_failed", f"llama.cpp could not create a context of {slots} x {ctx_per_slot} "
                              "tokens (out of memory? lower ctx or slots)")
        self.memory = lc.llama_get_memory(self.ctx)
        self.n_batch = n_batch
        self.ctx_per_seq = int(lc.llama_n_ctx_seq(self.ctx))
        self._batch = lc.llama_batch_init(n_batch, 0, 1)

    def decode(self, rows: Seq[Row]) -> list[int]:
        """Decode one step; returns, per row, the batch index of its last token
        (where its logits are, when it asked for them). Raises RuntimeError."""
        batch = self._batch
        n = 0
        last: list[int] = []
        for row in rows:
            for k, token in enumerate(row.tokens):
                batch.token[n] = token
                batch.pos[n] = row.pos + k
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = row.slot
                batch.logits[n] = row.logits and k == len(row.tokens) - 1
                n += 1
            last.append(n - 1)
        if n > self.n_batch:
            raise RuntimeError(f"step of {n} tokens exceeds n_batch {self.n_batch}")
        batch.n_tokens = n
        rc = self.lc.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return last

    def free_slot(self, slot: int) -> None:
        """Forget a slot's KV cells (its whole sequence)."""
        self.lc.llama_memory_seq_rm(self.memory, slot, -1, -1)

    def close(self) -> None:
        if self._batch is not None:
            self.lc.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            self.lc.llama_free(self.ctx)
            self.ctx = None


def check_fits(n_prompt: int, resume: Seq[int], limit: int, n_vocab: int) -> None:
    """Raise `EngineError("bad_request", ...)` unless a prompt of `n_prompt`
    tokens and the replayed `resume` ids fit a `limit`-token context."""
    if n_prompt == 0:
        raise EngineError("bad_request", "empty prompt (and the model adds no BOS token)")
    if n_prompt >= limit:
        raise EngineError("bad_request", f"prompt is {n_prompt} tokens; the context window is {limit} "
                          f"(at most {limit - 1} prompt tokens)")
    if n_prompt + len(resume) >= limit:
        raise EngineError("bad_request", f"prompt and resumed tokens ({n_prompt} + {len(resume)}) fill the "
                          f"{limit}-token context window")
    bad = [t for t in resume if not 0 <= t < n_vocab]
    if bad:  # one bad id would fail the whole batch's decode, other requests included
        raise EngineError("bad_request", f"resume_ids holds {bad[0]}, not a token of this model (0..{n_vocab - 1})")


def load_model(path: Path, *, slots: int, ctx_per_slot: int, n_batch: int, n_threads: int | None,
               n_gpu_layers: int, flash_attn: bool, verbose: bool) -> tuple[Any, Any, BatchContext]:
    """Check and load the GGUF at `path`: returns llama_cpp, a `Llama` (weights,
    tokenizer, chat template) and the batch context sharing its weights. Raises
    `EngineError("engine_failed", ...)` with one line. Threads default as in `Llama`."""
    check_gguf(path)
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineError("engine_failed",
                          f"llama-cpp-python is not importable ({exc}): pip install llama-cpp-python") from exc
    if not verbose:
        install_quiet_logging(llama_cpp)
    threads = n_threads or max(multiprocessing.cpu_count() // 2, 1)
    threads_batch = n_threads or multiprocessing.cpu_count()
    llm = None
    with collect_load_errors() as load_errors:
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=_TOKENIZER_CTX, n_batch=_TOKENIZER_CTX,
                                  n_threads=threads, n_threads_batch=threads_batch, n_gpu_layers=n_gpu_layers,
                                  verbose=verbose)
            ctx = BatchContext(llama_cpp, llm._model.model, ctx_per_slot=ctx_per_slot, slots=slots, n_batch=n_batch,
                               n_threads=threads, n_threads_batch=threads_batch, flash_attn=flash_attn)
        except Exception as exc:
            if llm is not None:
                llm.close()
            if isinstance(exc, EngineError):
                raise
            errors = [e for e in load_errors if e]
            detail = errors[0] if errors else f"{type(exc).__name__}: {exc}"
            raise EngineError("engine_failed",
                              f"llama.cpp could not load {path}: {detail}".replace("\n", " ")) from exc
    return llama_cpp, llm, ctx


__all__ = ["BatchContext", "Generation", "Job", "PENALTY_LAST_N", "Row", "SamplerChain", "Sequence", "SlotEvent",
           "SlotPhase", "SlotState", "check_fits", "load_model", "plan_step"]

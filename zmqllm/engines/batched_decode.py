"""The worker side of `BatchedLlamaEngine`: loading, one low-level context whose
KV cache keeps one stream per slot, one `llama_batch`, a sampler chain and a
`Generation` per request, and `plan_step`, which decides what the next decode
step holds (`plan_step` and `Sequence` are plain Python, no llama.cpp). The
context and the sampler chains themselves call llama.cpp's C API, so they live
in `llama_api` with every other such call.

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

from zmqllm.engines.base import EngineError, FinishReason, GenerationRequest, GenerationResult, TokenChunk
from zmqllm.engines.llama import check_gguf
from zmqllm.engines.llama_text import check_fits  # noqa: F401  (batched.py takes it from here)
from zmqllm.engines.llama_api import PENALTY_LAST_N, BatchContext, Row, SamplerChain, import_llama_cpp, model_handle
from zmqllm.engines.llama_log import collect_load_errors, install_quiet_logging
from zmqllm.engines.sampling import Sampling, TokenText
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
    cached: int = 0  # prompt tokens the slot's cells already held when it started (`fed` began there)
    sampled_ids: list[int] = field(default_factory=list)  # every token sampled to be fed, in order

    def in_cache(self) -> list[int]:
        """The tokens whose cells the slot holds: what a next request on this slot may reuse."""
        return (self.prompt + self.resume + self.sampled_ids)[: self.fed]

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
        if self.sampled is None:
            raise RuntimeError(f"slot {self.slot}: a decode step planned before its first token was sampled")
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
        self.seq.sampled_ids.append(token)
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
        self.job.resolve(GenerationResult(outcome, len(self.seq.prompt), self.seq.completion_tokens,
                                          self.seq.cached))


def load_model(path: Path, *, slots: int, ctx_per_slot: int, n_batch: int, n_threads: int | None,
               n_gpu_layers: int, flash_attn: bool, verbose: bool) -> tuple[Any, Any, BatchContext]:
    """Check and load the GGUF at `path`: returns llama_cpp, a `Llama` (weights,
    tokenizer, chat template) and the batch context sharing its weights. Raises
    `EngineError("engine_failed", ...)` with one line. Threads default as in `Llama`."""
    check_gguf(path)
    llama_cpp = import_llama_cpp()
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
            ctx = BatchContext(llama_cpp, model_handle(llm), ctx_per_slot=ctx_per_slot, slots=slots, n_batch=n_batch,
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

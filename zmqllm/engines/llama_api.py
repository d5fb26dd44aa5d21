"""Every use of llama-cpp-python below its public `Llama` class, in one place: the low-level C bindings
(`llama_cpp.llama_*`), `Llama`'s private attributes (`_model`, `_ctx`, `_sampler`) and module internals.

The engines go through this module only, so an upgrade of llama-cpp-python that renames or reshapes these
(they are not its public API) is fixed here. Written against llama-cpp-python 0.3.36 (llama.cpp's
`llama_memory_*` API; `llama_kv_self_*` is gone). `llama_cpp` is imported where it is used, never at module
import, so `zmqllm --help` stays fast; functions look it up at each call (tests may patch it).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from zmqllm.engines.base import EngineError
from zmqllm.engines.sampling import Sampling

@dataclass(frozen=True)
class Row:
    """One sequence's part of a decode step: `tokens` at positions `pos`,
    `pos + 1`, ...; `logits` asks for the logits of the last of them."""

    slot: int
    tokens: tuple[int, ...]
    pos: int
    logits: bool


PENALTY_LAST_N = 64
"""Tokens the repeat penalty looks back over: `Llama`'s `last_n_tokens_size` default."""


def import_llama_cpp() -> ModuleType:
    """The `llama_cpp` module; raises `EngineError("engine_failed", ...)` with the install hint when it is missing."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineError("engine_failed",
                          f"llama-cpp-python is not importable ({exc}): pip install llama-cpp-python") from exc
    return llama_cpp


# --- logging -------------------------------------------------------------------------


def route_logs(on_log: Callable[[int, bytes, Any], None]) -> Any:
    """Send llama.cpp's log lines to `on_log(level, text, user_data)`; returns the ctypes callback, which the
    caller must keep alive for as long as the process logs."""
    import llama_cpp

    callback = llama_cpp.llama_log_callback(on_log)
    llama_cpp.llama_log_set(callback, None)
    return callback


def replace_output_suppression(replacement: type) -> None:
    """Make llama-cpp-python use `replacement` instead of its `suppress_stdout_stderr` (which dup2()s file
    descriptors 1 and 2 to /dev/null process-wide while a model loads)."""
    import llama_cpp._internals as internals
    import llama_cpp.llama as llama_mod

    llama_mod.suppress_stdout_stderr = replacement
    internals.suppress_stdout_stderr = replacement


# --- a loaded `Llama` -----------------------------------------------------------------


def tokenize_prompt(llm: Any, prompt: str) -> list[int]:
    """Tokenise exactly as create_completion does (no suffix)."""
    model = llm._model
    bos = llm.token_bos()
    cls_id = model.token_cls()
    bos_tokens = [cls_id if cls_id != -1 else bos]
    if not model.add_bos_token() or bos_tokens[:1] == [-1]:
        bos_tokens = []
    body = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
    return bos_tokens + body


def vocab_size(llm: Any) -> int:
    """Tokens in the model's vocabulary (valid ids are 0 .. size - 1)."""
    import llama_cpp

    return int(llama_cpp.llama_vocab_n_tokens(llm._model.vocab))


def is_end_of_generation(llm: Any, token: int) -> bool:
    """Whether `token` ends a generation for this model (EOS, EOT, ...), as create_completion decides."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


def clear_memory(llm: Any) -> None:
    """Forget the KV cells of `llm`'s own context (cells only: no memset of the whole buffer)."""
    import llama_cpp

    memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
    if memory is not None:
        llama_cpp.llama_memory_clear(memory, False)


def remove_from(llm: Any, position: int) -> None:
    """Drop the KV cells at `position` and after, every sequence (the prefix before stays cached)."""
    llama_cpp = import_llama_cpp()
    memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
    if memory is not None:
        llama_cpp.llama_memory_seq_rm(memory, -1, position, -1)


def forget_sampler(llm: Any) -> None:
    """Drop the sampler `Llama.generate` built, so the next generation builds its own from its parameters."""
    llm._sampler = None


def model_handle(llm: Any) -> Any:
    """The C model pointer of a loaded `Llama`, for a second context sharing its weights."""
    return llm._model.model


# --- the batched engine's own context and samplers --------------------------------------------


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

    def trim_slot(self, slot: int, keep: int) -> bool:
        """Forget a slot's cells from position `keep` on; False (and the whole slot forgotten) when the memory
        cannot cut a sequence there (a sliding-window cache that is not full-size)."""
        if self.lc.llama_memory_seq_rm(self.memory, slot, keep, -1):
            return True
        self.free_slot(slot)
        return False

    def close(self) -> None:
        if self._batch is not None:
            self.lc.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            self.lc.llama_free(self.ctx)
            self.ctx = None


__all__ = ["BatchContext", "PENALTY_LAST_N", "SamplerChain", "clear_memory", "forget_sampler", "import_llama_cpp",
           "remove_from",
           "is_end_of_generation", "model_handle", "replace_output_suppression", "route_logs", "tokenize_prompt",
           "vocab_size"]


def copy_out_sequence(llm: Any, limit: int) -> Any:
    """Sequence 0's cells (KV and positions) as a ctypes byte array, or None when empty, over `limit` bytes, or
    refused. What `copy_in_sequence` puts back."""
    llama_cpp = import_llama_cpp()
    ctx = llm._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    if size <= 0 or size > limit:
        return None
    data = (ctypes.c_uint8 * size)()
    return data if llama_cpp.llama_state_seq_get_data(ctx, data, size, 0) == size else None


def copy_in_sequence(llm: Any, data: Any) -> bool:
    """Put back what `copy_out_sequence` copied (into an empty context); False when llama.cpp refuses it."""
    llama_cpp = import_llama_cpp()
    return llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, data, len(data), 0) == len(data)

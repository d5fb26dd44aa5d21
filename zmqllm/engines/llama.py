"""LlamaEngine: one local GGUF model served through llama-cpp-python.

One `Llama` object, one generation at a time (`slots = 1`). Every call into
llama.cpp (load, generate, close) runs on one dedicated worker thread (a
single-worker executor), so calls never overlap and the event loop never
blocks; tokens cross back to the loop with `loop.call_soon_threadsafe`.

Exactness: a greedy (temperature 0) generation here yields exactly the text of
`Llama(...).create_completion(prompt, max_tokens=N, temperature=0)` on a fresh
`Llama` with the same settings. To get that, this module drives the same
`Llama.generate` iterator that `create_completion` uses, with the same prompt
tokenisation, the same sampler chain and defaults, the same prompt batching
(chunks of `n_batch`), and it clears the KV cache before each request (no
prefix reuse: a prefix reused from an earlier request gives different floats).

Two deliberate differences from `create_completion`:
- `max_tokens` is a hard limit. `create_completion` keeps going past it (up to
  3 tokens) while the last character is an incomplete multi-byte UTF-8 sequence;
  here such a dangling partial character is dropped instead.
- with several stop sequences, the text is cut at the earliest one in the text
  (`create_completion` cuts at the first one in list order that occurs).

How sampled tokens become `TokenChunk`s (ids held back with their text while
it ends in a partial UTF-8 character or a possible stop prefix) is
`zmqllm.engines.sampling.TokenText`; llama.cpp's logging is `llama_log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Literal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zmqllm.engines.base import (
    Emit,
    EngineError,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    TokenChunk,
)
from zmqllm.engines.bundled import resolve_model_path
from zmqllm.engines.llama_log import collect_load_errors, install_quiet_logging
from zmqllm.engines.handoff import TokenHandoff
from zmqllm.engines.llama_base import LlamaModelEngine
from zmqllm.engines.llama_api import (
    clear_memory, forget_sampler, import_llama_cpp, is_end_of_generation, remove_from, tokenize_prompt, vocab_size,
)
from zmqllm.engines.llama_states import SavedStates, shared_prefix
from zmqllm.engines.llama_text import chat_renderer, check_fits
from zmqllm.engines.sampling import Sampling, TokenText, parse_sampling

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """Raise `EngineError("engine_failed", ...)` unless `path` is a readable
    file starting with the GGUF magic."""
    if not path.exists():
        raise EngineError("engine_failed", f"model file {path} does not exist")
    if not path.is_file():
        raise EngineError("engine_failed", f"model path {path} is not a file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise EngineError(
            "engine_failed", f"model file {path} cannot be read: {exc.strerror or exc}"
        ) from exc
    if head != GGUF_MAGIC:
        raise EngineError(
            "engine_failed",
            f"model file {path} is not a GGUF file (starts with {head!r}, expected b'GGUF')",
        )


# --- the engine -----------------------------------------------------------------


PrefixCache = Literal["exact", "longest", "off"]
PREFIX_CACHE_MODES: tuple[PrefixCache, ...] = ("exact", "longest", "off")
"""exact: reuse only whole prefill chunks a fresh run computes the same way (greedy output unchanged; pays for
prompts sharing at least `batch` tokens: long system prompts, long chats); longest: reuse every shared token
(more reuse, but the cells were computed in other batch shapes, so greedy text can differ from a fresh run's:
measured on the bundled model); off: every prompt from scratch."""


class LlamaEngine(LlamaModelEngine):
    """A llama-cpp-python model. Construct, then `await load()` (or use
    `await LlamaEngine.open(**settings)`), then `generate`, then `close`."""

    slots = 1

    def __init__(
        self,
        *,
        model: str,
        model_name: str | None = None,
        cache_dir: Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_batch: int = 512,
        flash_attn: bool = False,
        chat_format: str | None = None,
        verbose: bool = False,
        prefix_cache: PrefixCache = "exact",
        prefix_cache_mb: float = 256.0,
    ) -> None:
        super().__init__(model=model, model_name=model_name, cache_dir=cache_dir, n_ctx=n_ctx, n_threads=n_threads,
                         n_gpu_layers=n_gpu_layers, n_batch=n_batch, flash_attn=flash_attn,
                         chat_format=chat_format, verbose=verbose)
        # Figures of the last finished generation.
        self.last_tok_s: float = 0.0  # decode rate: tokens after the first / their time
        self.last_ttft_s: float = 0.0  # worker start -> first token sampled
        self.last_prompt_tokens: int = 0
        self.last_completion_tokens: int = 0
        self.prefix_cache: PrefixCache = prefix_cache
        """What a prompt may reuse of the context's cached tokens (`PREFIX_CACHE_MODES`)."""
        self._exact_upto = 0
        """Leading context tokens computed exactly as a fresh run computes them: whole `n_batch` prefill chunks
        from position 0. Reusing only these leaves a greedy answer bit for bit what a fresh run gives."""
        self._saved = SavedStates(int(prefix_cache_mb * 2**20) if prefix_cache != "off" else 0)
        """Recent prompts' contexts, so several conversations keep their prefixes in one context."""
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmqllm-llama")

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def prefix_capacity(self, model: str) -> int:
        """The live context and the saved ones (`prefix_cache_mb`) are what a next prompt can reuse."""
        return 0 if self.prefix_cache == "off" else max(1, len(self._saved))

    async def load(self) -> None:
        """Resolve the model (assembling a bundled one on first use), check it is
        a GGUF file, and load it, all on the engine's worker thread. Raises
        `EngineError("engine_failed", ...)` with one line saying what is wrong."""
        if self._closed:
            raise EngineError("engine_failed", "engine is closed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_blocking)

    def _load_blocking(self) -> None:
        if self._llm is not None:
            return
        t0 = time.perf_counter()
        path = resolve_model_path(self.spec, self.cache_dir)
        check_gguf(path)
        llama_cpp = import_llama_cpp()
        if not self.verbose:
            install_quiet_logging(llama_cpp)
        with collect_load_errors() as load_errors:
            try:
                llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=self.n_ctx,
                    n_batch=self.n_batch,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,
                    n_gpu_layers=self.n_gpu_layers,
                    flash_attn=self.flash_attn,
                    chat_format=self.chat_format,
                    verbose=self.verbose,
                )
            except Exception as exc:
                errors = [e for e in load_errors if e]
                detail = errors[0] if errors else f"{type(exc).__name__}: {exc}"
                raise EngineError(
                    "engine_failed",
                    f"llama.cpp could not load {path}: {detail}".replace("\n", " "),
                ) from exc
        self._llm = llm
        self.model_path = path
        self._render_chat = chat_renderer(self.spec, self.chat_format, llm)
        self.chat = self._render_chat is not None
        self.load_s = time.perf_counter() - t0
        log.info("loaded %s (%s) in %.2f s", self.models[0], path, self.load_s)

    async def generate(
        self, request: GenerationRequest, emit: Emit, cancel: threading.Event
    ) -> GenerationResult:
        if self._closed:
            raise EngineError("engine_failed", "engine is closed")
        if self._llm is None:
            raise EngineError("engine_failed", "model is not loaded (call load() first)")
        if request.max_tokens < 0:
            raise EngineError(
                "bad_request", f"max_tokens must be >= 0, got {request.max_tokens}"
            )
        sampling = parse_sampling(request.params)
        request = await self._as_completion(request)
        stops = tuple(s for s in request.stop if s)
        loop = asyncio.get_running_loop()
        handoff = TokenHandoff(loop, emit, cancel)
        fut = loop.run_in_executor(
            self._executor, self._generate_blocking, request, sampling, stops, handoff.deliver, handoff.stopped
        )
        try:
            result = await fut
        except asyncio.CancelledError:
            handoff.abort.set()
            raise
        # The future's result reaches the loop after every chunk scheduled before
        # it (call_soon_threadsafe is FIFO), so all emits have run by now.
        handoff.raise_emit_error()
        return result

    def _reset(self) -> None:
        """Forget all KV state so the next prompt is evaluated from scratch."""
        llm = self._llm
        self._exact_upto = 0
        llm.reset()
        clear_memory(llm)  # cells only: no 36 MB memset

    def _generate_blocking(
        self,
        request: GenerationRequest,
        sampling: Sampling,
        stops: tuple[str, ...],
        deliver: Callable[[TokenChunk], None],
        stopped: Callable[[], bool],
    ) -> GenerationResult:
        llm = self._llm
        if llm is None:
            raise EngineError("engine_failed", "model is closed")
        t_start = time.perf_counter()
        prompt_tokens = tokenize_prompt(llm, request.prompt)
        n_prompt = len(prompt_tokens)
        n_ctx = llm.n_ctx()
        resume = list(request.resume_ids)
        check_fits(n_prompt, resume, n_ctx, vocab_size(llm))  # a bad replayed id would crash llama_decode
        max_new = min(request.max_tokens - len(resume), n_ctx - n_prompt - len(resume))
        if max_new <= 0 or stopped():
            return self._finish("length" if not stopped() else "cancelled", n_prompt, 0,
                                t_start, None, None)

        try:
            cached = self._keep_prefix(prompt_tokens)
            # Prefill in the same n_batch chunks Llama.eval uses, checking cancel
            # between chunks; Llama.generate then finds the whole prompt cached
            # and samples straight away.
            for i in range(cached, n_prompt, llm.n_batch):
                if stopped():
                    self._reset()
                    return self._finish("cancelled", n_prompt, 0, t_start, None, None)
                llm.eval(prompt_tokens[i : i + llm.n_batch])
            # A failover resumes here: the tokens another node delivered are
            # replayed one per decode step, exactly as they were first decoded,
            # so a greedy continuation equals the uninterrupted run (prefilling
            # them in one batch would not: CPU kernels group rows differently).
            for token in resume:
                if stopped():
                    self._reset()
                    return self._finish("cancelled", n_prompt, 0, t_start, None, None)
                llm.eval([token])
            llm.set_seed(sampling.seed_to_use())
            gen = llm.generate(
                prompt_tokens + resume,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                typical_p=1.0,
                temp=sampling.temperature,
                repeat_penalty=sampling.repeat_penalty,
                frequency_penalty=0.0,
                presence_penalty=0.0,
                tfs_z=1.0,
                mirostat_mode=0,
                mirostat_tau=5.0,
                mirostat_eta=0.1,
            )
        except EngineError:
            raise
        except Exception as exc:
            self._safe_reset()
            raise EngineError("engine_failed", f"llama.cpp prefill failed: {exc}") from exc

        # detokenize() drops a leading space when the text starts with BOS, and
        # create_completion starts an empty prompt's completion with BOS.
        text = TokenText(stops, bos_id=llm.token_bos(),
                         strip_space=n_prompt > 0 and request.prompt == "" and not resume)
        n = 0  # completion tokens (EOS excluded)
        n_sampled = 0  # tokens sampled (EOS included)
        finish: FinishReason = "length"
        t_first: float | None = None
        t_last: float | None = None
        try:
            while True:
                try:
                    tok = next(gen)
                except StopIteration:
                    break
                t_last = time.perf_counter()
                n_sampled += 1
                if t_first is None:
                    t_first = t_last
                if is_end_of_generation(llm, tok):
                    finish = "stop"
                    break
                n += 1
                text.push(tok, llm.detokenize([tok]))
                last_chunk = text.take_stopped()
                if last_chunk is not None:
                    deliver(last_chunk)
                    finish = "stop"
                    break
                if n >= max_new:
                    break
                if stopped():
                    finish = "cancelled"
                    break
                chunk = text.take_ready()
                if chunk is not None:
                    deliver(chunk)
        except Exception as exc:
            self._safe_reset()
            raise EngineError("engine_failed", f"llama.cpp generation failed: {exc}") from exc
        finally:
            gen.close()
            forget_sampler(llm)
        # Whatever is held back (a possible stop prefix, ids of an incomplete
        # character) ends the stream; a dangling partial character is dropped.
        rest = text.take_rest()
        if rest is not None:
            deliver(rest)
        self._saved.save(llm, self._exact_upto)
        return self._finish(finish, n_prompt, n, t_start, t_first, t_last, n_sampled, cached)

    def _keep_prefix(self, prompt_tokens: list[int]) -> int:
        """Forget the context past what this prompt may reuse of it (`prefix_cache`); returns how many prompt
        tokens stay cached. At least the prompt's last token is computed again, as Llama.generate wants its
        logits fresh. Records how much of the context will be exact once the rest is prefilled."""
        llm = self._llm
        chunk = llm.n_batch
        keep = 0
        if self.prefix_cache != "off":
            self._bring_back_best(prompt_tokens[:-1])
            for cached, wanted in zip(llm.input_ids[: llm.n_tokens].tolist(), prompt_tokens[:-1]):
                if cached != wanted:
                    break
                keep += 1
        if self.prefix_cache == "exact":
            keep = min(keep, self._exact_upto) // chunk * chunk
        exact = min(keep, self._exact_upto) // chunk * chunk  # kept cells a fresh run computes the same way
        if keep == 0:
            self._reset()
        else:
            remove_from(llm, keep)
            llm.n_tokens = keep
        aligned = keep == exact  # the chunks prefilled next start where a fresh run's do
        self._exact_upto = exact + ((len(prompt_tokens) - keep) // chunk * chunk if aligned else 0)
        return keep

    def _reusable(self, shared: int, exact_upto: int) -> int:
        """Of `shared` leading tokens, those this prefix cache mode reuses."""
        if self.prefix_cache == "exact":
            return min(shared, exact_upto) // self._llm.n_batch * self._llm.n_batch
        return shared

    def _bring_back_best(self, prompt: list[int]) -> None:
        """Make live the saved context this prompt reuses most of, when it beats the live one."""
        llm = self._llm
        state, shared = self._saved.best(prompt)
        live = shared_prefix(llm.input_ids[: llm.n_tokens].tolist(), prompt)
        if state is None or self._reusable(shared, state.exact_upto) <= self._reusable(live, self._exact_upto):
            return
        self._exact_upto = state.exact_upto if self._saved.restore(llm, state) else 0

    def _finish(
        self,
        finish: FinishReason,
        n_prompt: int,
        n: int,
        t_start: float,
        t_first: float | None,
        t_last: float | None,
        n_sampled: int = 0,
        cached: int = 0,
    ) -> GenerationResult:
        self.last_prompt_tokens = n_prompt
        self.last_completion_tokens = n
        self.last_ttft_s = (t_first - t_start) if t_first is not None else 0.0
        if t_first is not None and t_last is not None and t_last > t_first:
            # decode steps after the first token (a final EOS included) / their time
            self.last_tok_s = (n_sampled - 1) / (t_last - t_first)
        else:
            self.last_tok_s = 0.0
        return GenerationResult(finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=n,
                                cached_tokens=cached)

    def _safe_reset(self) -> None:
        with contextlib.suppress(Exception):
            self._reset()

    async def close(self) -> None:
        """Free the model (after a running generation ends) and the worker."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await loop.run_in_executor(self._executor, self._free)
        self._executor.shutdown(wait=False)

    def _free(self) -> None:
        llm = self._take_model()
        if llm is not None:
            llm.close()


__all__ = ["LlamaEngine", "check_gguf", "GGUF_MAGIC", "parse_sampling"]

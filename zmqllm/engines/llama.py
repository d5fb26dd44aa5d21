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

Chunks and ids: each `TokenChunk` carries the ids of the tokens whose text it
completes, so the text delivered so far always equals the decoded ids delivered
so far. Tokens are held back (text and id together) while their bytes end in an
incomplete UTF-8 character or their text could be the start of a stop sequence.
The one exception is the last chunk of a stopped generation: it carries the ids
of the tokens that hold the stop text, but not that text.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmqllm.chat import PLAIN, PLAIN_STOPS, render_plain
from zmqllm.engines.base import (
    SAMPLING_KEYS,
    Emit,
    Engine,
    EngineError,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    TokenChunk,
)
from zmqllm.engines.bundled import advertised_name, is_bundled, resolve_model_path

log = logging.getLogger(__name__)
cpp_log = logging.getLogger("zmqllm.llama_cpp")  # llama.cpp's own log lines

GGUF_MAGIC = b"GGUF"

# create_completion's defaults in llama-cpp-python 0.3.36.
DEFAULT_SAMPLING: dict[str, Any] = {
    "temperature": 0.8,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
}
_SEED_MOD = 0xFFFFFFFF  # seeds map into 0 .. 2**32-2 (2**32-1 means "random" to llama.cpp)
_seed_source = random.SystemRandom()


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None


def parse_sampling(params: dict[str, Any]) -> Sampling:
    """Validate `request.params` (keys of `base.SAMPLING_KEYS`) and fill in
    create_completion's defaults. Raises `EngineError("bad_request", ...)`."""
    unknown = sorted(set(params) - set(SAMPLING_KEYS))
    if unknown:
        raise EngineError(
            "bad_request",
            f"unknown sampling parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(SAMPLING_KEYS)}",
        )
    values: dict[str, Any] = dict(DEFAULT_SAMPLING)
    for key, value in params.items():
        want = SAMPLING_KEYS[key]
        if value is None:
            continue
        ok = isinstance(value, int) if want is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise EngineError(
                "bad_request", f"{key} must be {want.__name__}, got {value!r}"
            )
        if want is float:
            value = float(value)
            if not math.isfinite(value):
                raise EngineError("bad_request", f"{key} must be finite, got {value!r}")
        values[key] = value
    checks = [
        ("temperature", values["temperature"] >= 0.0, ">= 0"),
        ("top_p", 0.0 <= values["top_p"] <= 1.0, "in [0, 1]"),
        ("top_k", values["top_k"] >= 0, ">= 0 (0 = no limit)"),
        ("min_p", 0.0 <= values["min_p"] <= 1.0, "in [0, 1]"),
        ("repeat_penalty", values["repeat_penalty"] > 0.0, "> 0"),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise EngineError("bad_request", f"{key} must be {rule}, got {values[key]!r}")
    seed = values.get("seed")
    return Sampling(
        temperature=values["temperature"],
        top_p=values["top_p"],
        top_k=values["top_k"],
        min_p=values["min_p"],
        repeat_penalty=values["repeat_penalty"],
        seed=None if seed is None else seed % _SEED_MOD,
    )


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


# --- llama.cpp logging ---------------------------------------------------------
#
# With verbose=False, llama-cpp-python 0.3.36 silences model loading by dup2()-ing
# file descriptors 1 and 2 to /dev/null and swapping sys.stdout/sys.stderr,
# process-wide, for the whole load: anything the daemon logs meanwhile, from any
# thread, is lost. So for verbose=False we replace that context manager with a
# no-op and route llama.cpp's log callback into the `zmqllm.llama_cpp` logger
# instead (the daemon's logging config decides what shows); ERROR lines logged
# during a failed load go into the EngineError message.

# ggml_log_level as llama.cpp in 0.3.36 sends it: NONE 0, DEBUG 1, INFO 2, WARN 3,
# ERROR 4, CONT 5 (llama_cpp._logger still maps the older enum: it shows WARN lines
# as errors and hides real ERROR lines as debug).
# llama.cpp's INFO is a page of model metadata per load: shown with --log-level debug.
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG,
               3: logging.WARNING, 4: logging.ERROR}
_log_lock = threading.Lock()
_log_installed = False
_log_callback: Any = None  # keeps the ctypes callback alive
_load_errors: list[str] | None = None  # collects ERROR lines during a load


class _NoSuppress:
    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> _NoSuppress:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def _install_quiet_logging(llama_cpp: Any) -> None:
    global _log_installed, _log_callback
    with _log_lock:
        if _log_installed:
            return
        last = [logging.DEBUG]

        def on_log(level: int, text: bytes, _user: Any) -> None:
            try:
                lvl = last[0] if level == 5 else _LOG_LEVELS.get(level, logging.INFO)
                last[0] = lvl
                line = text.decode("utf-8", "replace").rstrip()
                if not line.strip(". "):  # progress dots
                    return
                if lvl >= logging.ERROR and _load_errors is not None:
                    _load_errors.append(line)
                cpp_log.log(lvl, "%s", line)
            except Exception:  # never raise into C
                pass

        _log_callback = llama_cpp.llama_log_callback(on_log)
        llama_cpp.llama_log_set(_log_callback, None)
        import llama_cpp._internals as internals
        import llama_cpp.llama as llama_mod

        llama_mod.suppress_stdout_stderr = _NoSuppress
        internals.suppress_stdout_stderr = _NoSuppress
        _log_installed = True


# --- the engine -----------------------------------------------------------------


class LlamaEngine(Engine):
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
    ) -> None:
        self.spec = model
        self.cache_dir = Path(cache_dir).expanduser()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.n_batch = n_batch
        self.flash_attn = flash_attn
        self.chat_format = chat_format
        self.verbose = verbose
        self.models = (advertised_name(model, model_name),)
        self.ctx = n_ctx
        self._render_chat: Callable[[list[dict[str, str]]], tuple[str, tuple[str, ...]]] | None = None
        self.model_path: Path | None = None
        self.load_s: float = 0.0
        # Figures of the last finished generation.
        self.last_tok_s: float = 0.0  # decode rate: tokens after the first / their time
        self.last_ttft_s: float = 0.0  # worker start -> first token sampled
        self.last_prompt_tokens: int = 0
        self.last_completion_tokens: int = 0
        self._llm: Any = None
        self._llama_cpp: Any = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmqllm-llama")

    @classmethod
    async def open(cls, **settings: Any) -> LlamaEngine:
        """Construct and load (see `__init__` for the settings)."""
        engine = cls(**settings)
        try:
            await engine.load()
        except BaseException:
            await engine.close()
            raise
        return engine

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    async def load(self) -> None:
        """Resolve the model (assembling a bundled one on first use), check it is
        a GGUF file, and load it, all on the engine's worker thread. Raises
        `EngineError("engine_failed", ...)` with one line saying what is wrong."""
        if self._closed:
            raise EngineError("engine_failed", "engine is closed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_blocking)

    def _load_blocking(self) -> None:
        global _load_errors
        if self._llm is not None:
            return
        t0 = time.perf_counter()
        path = resolve_model_path(self.spec, self.cache_dir)
        check_gguf(path)
        try:
            import llama_cpp
        except ImportError as exc:
            raise EngineError(
                "engine_failed",
                f"llama-cpp-python is not importable ({exc}): pip install llama-cpp-python",
            ) from exc
        if not self.verbose:
            _install_quiet_logging(llama_cpp)
        _load_errors = []
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
            errors = [e for e in _load_errors if e]
            detail = errors[0] if errors else f"{type(exc).__name__}: {exc}"
            raise EngineError(
                "engine_failed",
                f"llama.cpp could not load {path}: {detail}".replace("\n", " "),
            ) from exc
        finally:
            _load_errors = None
        self._llm = llm
        self._llama_cpp = llama_cpp
        self.model_path = path
        self._render_chat = self._chat_renderer(llm, llama_cpp)
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
        if request.messages:
            if self._render_chat is None:
                raise EngineError("bad_request", f"model {self.models[0]} has no chat template: start its daemon "
                                  "with --chat-format plain (or a Jinja template file), or send a plain prompt")
            try:
                prompt, template_stops = self._render_chat(list(request.messages))
            except Exception as exc:  # a template that raises on these messages
                raise EngineError("bad_request", f"chat template failed: {exc}") from None
            request = dataclasses.replace(request, prompt=prompt, messages=(), stop=request.stop + template_stops)
        stops = tuple(s for s in request.stop if s)

        loop = asyncio.get_running_loop()
        abort = threading.Event()  # the awaiting task went away, or emit failed
        emit_errors: list[BaseException] = []

        def on_loop(chunk: TokenChunk) -> None:
            if abort.is_set():
                return
            try:
                emit(chunk)
            except BaseException as exc:  # stop generating, re-raise below
                emit_errors.append(exc)
                abort.set()

        def deliver(chunk: TokenChunk) -> None:  # worker thread
            try:
                loop.call_soon_threadsafe(on_loop, chunk)
            except RuntimeError:  # loop closed
                abort.set()

        def stopped() -> bool:
            return cancel.is_set() or abort.is_set()

        fut = loop.run_in_executor(
            self._executor, self._generate_blocking, request, sampling, stops, deliver, stopped
        )
        try:
            result = await fut
        except asyncio.CancelledError:
            abort.set()
            raise
        # The future's result reaches the loop after every chunk scheduled before
        # it (call_soon_threadsafe is FIFO), so all emits have run by now.
        if emit_errors:
            raise emit_errors[0]
        return result

    def _chat_renderer(
        self, llm: Any, llama_cpp: Any
    ) -> Callable[[list[dict[str, str]]], tuple[str, tuple[str, ...]]] | None:
        """How chat messages become a prompt: `chat_format` "plain" (the default
        for the bundled base model), a Jinja template file, or the GGUF's own
        template; None when there is none (chat requests are then refused)."""
        fmt = self.chat_format or (PLAIN if is_bundled(self.spec) else None)
        if fmt == PLAIN:
            return lambda messages: (render_plain(messages), PLAIN_STOPS)
        if fmt is not None:
            template_path = Path(fmt).expanduser()
            if not template_path.is_file():
                raise EngineError("engine_failed", f"chat_format {fmt!r} is neither 'plain' nor a template file")
            template = template_path.read_text()
        else:
            template = llm.metadata.get("tokenizer.chat_template")
            if not template:
                return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

        def render(messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
            prompt = formatter(messages=messages).prompt
            return prompt.removeprefix(bos), (eos,) if eos else ()  # the tokenizer adds BOS itself

        return render

    def _prompt_tokens(self, prompt: str) -> list[int]:
        """Tokenise exactly as create_completion does (no suffix)."""
        llm = self._llm
        model = llm._model
        bos = llm.token_bos()
        cls_id = model.token_cls()
        bos_tokens = [cls_id if cls_id != -1 else bos]
        if not model.add_bos_token() or bos_tokens[:1] == [-1]:
            bos_tokens = []
        body = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
        return bos_tokens + body

    def _reset(self) -> None:
        """Forget all KV state so the next prompt is evaluated from scratch."""
        llm, lc = self._llm, self._llama_cpp
        llm.reset()
        mem = lc.llama_get_memory(llm._ctx.ctx)
        if mem is not None:
            lc.llama_memory_clear(mem, False)  # cells only: no 36 MB memset

    def _generate_blocking(
        self,
        request: GenerationRequest,
        sampling: Sampling,
        stops: tuple[str, ...],
        deliver: Callable[[TokenChunk], None],
        stopped: Callable[[], bool],
    ) -> GenerationResult:
        llm, lc = self._llm, self._llama_cpp
        if llm is None:
            raise EngineError("engine_failed", "model is closed")
        t_start = time.perf_counter()
        prompt_tokens = self._prompt_tokens(request.prompt)
        n_prompt = len(prompt_tokens)
        n_ctx = llm.n_ctx()
        if n_prompt == 0:
            raise EngineError("bad_request", "empty prompt (and the model adds no BOS token)")
        if n_prompt >= n_ctx:
            raise EngineError(
                "bad_request",
                f"prompt is {n_prompt} tokens; the context window is {n_ctx} "
                f"(at most {n_ctx - 1} prompt tokens)",
            )
        max_new = min(request.max_tokens, n_ctx - n_prompt)
        if max_new == 0 or stopped():
            return self._finish("length" if not stopped() else "cancelled", n_prompt, 0,
                                t_start, None, None)

        try:
            self._reset()
            # Prefill in the same n_batch chunks Llama.eval uses, checking cancel
            # between chunks; Llama.generate then finds the whole prompt cached
            # and samples straight away.
            for i in range(0, n_prompt, llm.n_batch):
                if stopped():
                    self._reset()
                    return self._finish("cancelled", n_prompt, 0, t_start, None, None)
                llm.eval(prompt_tokens[i : i + llm.n_batch])
            llm.set_seed(
                sampling.seed if sampling.seed is not None else _seed_source.randrange(_SEED_MOD)
            )
            gen = llm.generate(
                prompt_tokens,
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

        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        # detokenize() drops a leading space when the text starts with BOS, and
        # create_completion starts an empty prompt's completion with BOS.
        strip_space = n_prompt > 0 and request.prompt == ""
        pending_ids: list[int] = []
        pending_text = ""
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
                if lc.llama_vocab_is_eog(vocab, tok):
                    finish = "stop"
                    break
                n += 1
                if n == 1 and tok == llm.token_bos():
                    strip_space = True
                piece = llm.detokenize([tok])
                if strip_space and piece:
                    if piece[:1] == b" ":
                        piece = piece[1:]
                    strip_space = False
                pending_ids.append(tok)
                pending_text += decoder.decode(piece)
                if stops:
                    cut = _earliest_stop(pending_text, stops)
                    if cut is not None:
                        deliver(TokenChunk(pending_text[:cut], tuple(pending_ids)))
                        pending_ids, pending_text = [], ""
                        finish = "stop"
                        break
                if n >= max_new:
                    break
                if stopped():
                    finish = "cancelled"
                    break
                if pending_text and not decoder.getstate()[0] and not (
                    stops and _holds_stop_prefix(pending_text, stops)
                ):
                    deliver(TokenChunk(pending_text, tuple(pending_ids)))
                    pending_ids, pending_text = [], ""
        except Exception as exc:
            self._safe_reset()
            raise EngineError("engine_failed", f"llama.cpp generation failed: {exc}") from exc
        finally:
            gen.close()
            llm._sampler = None
        # Whatever is held back (a possible stop prefix, ids of an incomplete
        # character) ends the stream; a dangling partial character is dropped.
        pending_text += decoder.decode(b"", final=True)
        if pending_text or pending_ids:
            deliver(TokenChunk(pending_text, tuple(pending_ids)))
        return self._finish(finish, n_prompt, n, t_start, t_first, t_last, n_sampled)

    def _finish(
        self,
        finish: FinishReason,
        n_prompt: int,
        n: int,
        t_start: float,
        t_first: float | None,
        t_last: float | None,
        n_sampled: int = 0,
    ) -> GenerationResult:
        self.last_prompt_tokens = n_prompt
        self.last_completion_tokens = n
        self.last_ttft_s = (t_first - t_start) if t_first is not None else 0.0
        if t_first is not None and t_last is not None and t_last > t_first:
            # decode steps after the first token (a final EOS included) / their time
            self.last_tok_s = (n_sampled - 1) / (t_last - t_first)
        else:
            self.last_tok_s = 0.0
        return GenerationResult(finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=n)

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
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()


def _earliest_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _holds_stop_prefix(text: str, stops: tuple[str, ...]) -> bool:
    """Whether some suffix of `text` is a proper prefix of a stop sequence."""
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                return True
    return False


__all__ = ["LlamaEngine", "Sampling", "parse_sampling", "check_gguf", "GGUF_MAGIC"]

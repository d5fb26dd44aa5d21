"""`zmqllm bench concurrency`: concurrent greedy streams through one batched daemon, against a baseline.

N clients each ask one llama daemon (slots = N) for 128 greedy tokens at once,
streamed; the figure is aggregate tokens/s (all tokens ÷ wall time) and each
stream's inter-token latency. Both sides stay up and their rounds alternate,
so drift on the machine (other load, clock speed) hits both alike. The baseline, measured in the same run with the same
threads, is llama.cpp's own `llama-server -np N`: the binary given
(`--llama-server PATH`), else the one built once from the installed
llama-cpp-python's vendored llama.cpp (`zmqllm.bench.llama_server`). Where neither
can be had (`--no-build`, no cmake or compiler), it is the same daemon with
slots = 1 (requests one after another), and the summary says which and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from zmqllm.bench import llama_server as server_build
from zmqllm.node import paths
from zmqllm.bench.chaos import percentile
from zmqllm.bench.mesh import daemons
from zmqllm.client import AsyncClient

MODEL = "bundled:gemma3-270m"
TOKENS = 128
WARMUP_TOKENS = 8
"""A warm-up request only loads the model and fills the caches: a few tokens do."""
CTX_PER_SLOT = 512
PROMPTS = ["The capital of France is", "Once upon a time", "The best way to cook rice is", "Water boils at",
           "My favourite colour is", "The train left the station", "In the year 1900", "Cats and dogs"]
SERVER_READY_S = 120.0


def _percentile(values: list[float], q: float) -> float:
    """`chaos.percentile`, with 0.0 for no values (a table cell, not a missing figure)."""
    return percentile(values, q) or 0.0


Round = Callable[[], tuple[float, list[float]]]
"""One round of `width` concurrent streams: aggregate tok/s and every inter-token gap (ms)."""


async def _mesh_round(endpoint: str, width: int, tokens: int) -> tuple[float, list[float]]:
    gaps: list[float] = []

    async def one(client: AsyncClient, prompt: str) -> int:
        last, produced = 0.0, 0
        async for event in client.submit(prompt, max_tokens=tokens, params={"temperature": 0.0}):
            if event["type"] == "token":
                now = time.perf_counter()
                if last:
                    gaps.append((now - last) * 1000)
                last = now
            elif event["type"] == "done":
                produced = int(event["usage"]["completion_tokens"])
            elif event["type"] == "error":
                raise RuntimeError(event["message"])
        return produced

    async with AsyncClient(endpoint, timeout=120) as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(client, PROMPTS[i % len(PROMPTS)]) for i in range(width)))
        return sum(counts) / (time.perf_counter() - started), gaps


@contextlib.contextmanager
def _mesh(home: str, width: int, slots: int, threads: int, gpu_layers: int, tokens: int) -> Iterator[Round]:
    """A llama daemon with `slots` slots, warmed up."""
    with daemons(home) as start:
        _, endpoint = start(f"bench{slots}", "--engine", "llama", "--model", MODEL, "--slots", str(slots),
                            "--threads", str(threads), "--ctx", str(CTX_PER_SLOT), "--gpu-layers", str(gpu_layers))
        asyncio.run(_mesh_round(endpoint, 1, WARMUP_TOKENS))
        yield lambda: asyncio.run(_mesh_round(endpoint, width, tokens))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_round(base: str, width: int, tokens: int) -> tuple[float, list[float]]:
    """Streamed as zmqllm streams: one SSE event per token, read as it comes."""
    gaps: list[float] = []
    counts: list[int] = []

    def complete(prompt: str) -> None:
        body = json.dumps({"prompt": prompt, "n_predict": tokens, "temperature": 0.0, "cache_prompt": False,
                           "stream": True}).encode()
        request = urllib.request.Request(base + "/completion", body, {"Content-Type": "application/json"})
        last, predicted = 0.0, 0
        with urllib.request.urlopen(request, timeout=300) as reply:
            for line in reply:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("stop"):
                    predicted = int(event.get("tokens_predicted", 0))
                    continue
                now = time.perf_counter()
                if last:
                    gaps.append((now - last) * 1000)
                last = now
        counts.append(predicted)

    workers = [threading.Thread(target=complete, args=(PROMPTS[i % len(PROMPTS)],)) for i in range(width)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if len(counts) != width:
        raise RuntimeError(f"llama-server finished {len(counts)} of {width} requests")
    return sum(counts) / (time.perf_counter() - started), gaps


@contextlib.contextmanager
def _server(binary: str, model: Path, width: int, threads: int, gpu_layers: int, tokens: int) -> Iterator[Round]:
    """`llama-server -np width` on a free port, warmed up."""
    port = _free_port()
    proc = subprocess.Popen([binary, "-m", str(model), "-np", str(width), "-c", str(CTX_PER_SLOT * width),
                             "-t", str(threads), "-ngl", str(gpu_layers), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_READY_S
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server at {binary} did not start")
            time.sleep(0.2)
        _server_round(base, 1, WARMUP_TOKENS)
        yield lambda: _server_round(base, width, tokens)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pick_server(given: str | None, build: bool, progress: Callable[[str], None]) -> tuple[str | None, str]:
    """The llama-server binary to compare with, or None and why there is none."""
    if given:
        return given, ""
    try:
        cached = server_build.cached_binary()
        if cached.is_file():
            return str(cached), ""
        if not build:
            return None, "not built yet and --no-build given"
        return str(server_build.build(progress)), ""
    except server_build.BuildError as exc:
        return None, str(exc)


def run_concurrency(runs: int = 3, threads: int = 2, widths: tuple[int, ...] = (4, 8),
                    llama_server: str | None = None, build: bool = True, gpu_layers: int = 0, tokens: int = TOKENS,
                    progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Median (and range) aggregate tok/s per width, zmqllm ÷ baseline, and inter-token latency."""
    llama_server, no_server = pick_server(llama_server, build, progress)
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for width in widths:
            if llama_server:
                from zmqllm.engines.bundled import resolve_model_path

                model = resolve_model_path(MODEL, paths.cache_dir() / "models")
                baseline = _server(llama_server, model, width, threads, gpu_layers, tokens)
                label = f"llama-server -np {width}"
            else:
                baseline = _mesh(home, width, 1, threads, gpu_layers, tokens)
                label = f"zmqllm slots=1 (no llama-server: {no_server})"
            progress(f"N={width}: {runs} rounds each, alternating zmqllm slots={width} and {label}")
            mesh, base, gaps, base_gaps = [], [], [], []
            with _mesh(home, width, width, threads, gpu_layers, tokens) as mesh_round, baseline as base_round:
                for _ in range(runs):  # alternating, so drift on the machine hits both alike
                    rate, round_gaps = mesh_round()
                    mesh.append(rate)
                    gaps += round_gaps
                    rate, round_gaps = base_round()
                    base.append(rate)
                    base_gaps += round_gaps
            rows.append({"width": width, "baseline": label, "mesh_tok_s": [round(x, 1) for x in mesh],
                         "baseline_tok_s": [round(x, 1) for x in base],
                         "ratio": round(statistics.median(mesh) / statistics.median(base), 3),
                         "itl_p50_ms": round(_percentile(gaps, 0.5), 1),
                         "itl_p99_ms": round(_percentile(gaps, 0.99), 1),
                         "baseline_itl_p50_ms": round(_percentile(base_gaps, 0.5), 1),
                         "baseline_itl_p99_ms": round(_percentile(base_gaps, 0.99), 1)})
    lines = [f"concurrency: N concurrent {tokens}-token greedy requests, bundled model, {threads} threads, "
             f"{gpu_layers} GPU layers, {runs} runs (median [range])"]
    for row in rows:
        mesh, base = row["mesh_tok_s"], row["baseline_tok_s"]
        lines.append(f"  N={row['width']}: zmqllm slots={row['width']} {statistics.median(mesh):.1f} tok/s "
                     f"[{min(mesh)}-{max(mesh)}]; {row['baseline']} {statistics.median(base):.1f} tok/s "
                     f"[{min(base)}-{max(base)}]; ratio {row['ratio']:.3f} (goal >= 1.0 against llama-server); "
                     f"inter-token p50 / p99 {row['itl_p50_ms']} / {row['itl_p99_ms']} ms "
                     f"(baseline {row['baseline_itl_p50_ms']} / {row['baseline_itl_p99_ms']} ms)")
    return {"bench": "concurrency", "rows": rows, "summary": "\n".join(lines)}

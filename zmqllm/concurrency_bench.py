"""`zmqllm bench concurrency`: concurrent greedy streams through one batched daemon, against a baseline.

N clients each ask one llama daemon (slots = N) for 128 greedy tokens at once;
the figure is aggregate tokens/s (all tokens ÷ wall time) and each stream's
inter-token latency. The baseline, measured in the same run with the same
threads, is llama.cpp's own `llama-server -np N` when a binary is given
(`--llama-server PATH`), else the same daemon with slots = 1 (requests one
after another), and the summary says which.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from zmqllm import paths
from zmqllm.bench import _start_daemon, stop_daemons
from zmqllm.client import AsyncClient

MODEL = "bundled:gemma3-270m"
TOKENS = 128
CTX_PER_SLOT = 512
PROMPTS = ["The capital of France is", "Once upon a time", "The best way to cook rice is", "Water boils at",
           "My favourite colour is", "The train left the station", "In the year 1900", "Cats and dogs"]
SERVER_READY_S = 120.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _mesh_round(endpoint: str, width: int) -> tuple[float, list[float]]:
    """Aggregate tok/s of `width` concurrent streams, and every inter-token gap (ms)."""
    gaps: list[float] = []

    async def one(client: AsyncClient, prompt: str) -> int:
        count, last = 0, 0.0
        async for event in client.submit(prompt, max_tokens=TOKENS, params={"temperature": 0.0}):
            if event["type"] == "token":
                now = time.perf_counter()
                if last:
                    gaps.append((now - last) * 1000)
                last, count = now, count + 1
            elif event["type"] == "error":
                raise RuntimeError(event["message"])
        return count

    async with AsyncClient(endpoint, timeout=120) as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(client, PROMPTS[i % len(PROMPTS)]) for i in range(width)))
        return sum(counts) / (time.perf_counter() - started), gaps


def _mesh(home: str, width: int, slots: int, threads: int, runs: int) -> tuple[list[float], list[float]]:
    proc, endpoint = _start_daemon("bench", home, "--engine", "llama", "--model", MODEL, "--slots", str(slots),
                                   "--threads", str(threads), "--ctx", str(CTX_PER_SLOT))
    try:
        asyncio.run(_mesh_round(endpoint, 1))  # warm-up
        rounds = [asyncio.run(_mesh_round(endpoint, width)) for _ in range(runs)]
    finally:
        stop_daemons([proc])
    return [rate for rate, _ in rounds], [gap for _, gaps in rounds for gap in gaps]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(binary: str, model: Path, width: int, threads: int, runs: int) -> list[float]:
    port = _free_port()
    proc = subprocess.Popen([binary, "-m", str(model), "-np", str(width), "-c", str(CTX_PER_SLOT * width),
                             "-t", str(threads), "--host", "127.0.0.1", "--port", str(port)],
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

        def complete(prompt: str, out: list[int]) -> None:
            body = json.dumps({"prompt": prompt, "n_predict": TOKENS, "temperature": 0.0, "cache_prompt": False,
                               "ignore_eos": False}).encode()
            request = urllib.request.Request(base + "/completion", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as reply:
                out.append(int(json.load(reply).get("tokens_predicted", 0)))

        def one_round(n: int) -> float:
            counts: list[int] = []
            workers = [threading.Thread(target=complete, args=(PROMPTS[i % len(PROMPTS)], counts)) for i in range(n)]
            started = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            return sum(counts) / (time.perf_counter() - started)

        one_round(1)  # warm-up
        return [one_round(width) for _ in range(runs)]
    finally:
        proc.terminate()
        proc.wait(30)


def run_concurrency(runs: int = 3, threads: int = 2, widths: tuple[int, ...] = (4, 8),
                    llama_server: str | None = None) -> dict[str, Any]:
    """Median (and range) aggregate tok/s per width, zmqllm ÷ baseline, and inter-token latency."""
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for width in widths:
            mesh, gaps = _mesh(home, width, width, threads, runs)
            if llama_server:
                from zmqllm.engines.bundled import resolve_model_path

                model = resolve_model_path(MODEL, paths.cache_dir() / "models")
                base, label = _server(llama_server, model, width, threads, runs), f"llama-server -np {width}"
            else:
                base, label = _mesh(home, width, 1, threads, runs)[0], "zmqllm slots=1 (no llama-server given)"
            rows.append({"width": width, "baseline": label, "mesh_tok_s": [round(x, 1) for x in mesh],
                         "baseline_tok_s": [round(x, 1) for x in base],
                         "ratio": round(statistics.median(mesh) / statistics.median(base), 3),
                         "itl_p50_ms": round(_percentile(gaps, 0.5), 1), "itl_p99_ms": round(_percentile(gaps, 0.99), 1)})
    lines = [f"concurrency: N concurrent {TOKENS}-token greedy requests, bundled model, {threads} threads, "
             f"{runs} runs (median [range])"]
    for row in rows:
        mesh, base = row["mesh_tok_s"], row["baseline_tok_s"]
        lines.append(f"  N={row['width']}: zmqllm slots={row['width']} {statistics.median(mesh):.1f} tok/s "
                     f"[{min(mesh)}-{max(mesh)}]; {row['baseline']} {statistics.median(base):.1f} tok/s "
                     f"[{min(base)}-{max(base)}]; ratio {row['ratio']:.3f} (goal >= 1.0 against llama-server); "
                     f"inter-token p50 {row['itl_p50_ms']} ms, p99 {row['itl_p99_ms']} ms")
    return {"bench": "concurrency", "rows": rows, "summary": "\n".join(lines)}

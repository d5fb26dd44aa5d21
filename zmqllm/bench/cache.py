"""`zmqllm bench cache`: conversations that grow turn by turn, with and without prompt-prefix reuse.

Four conversations of eight turns each share a long system prompt (about 1,000 tokens of the bundled model) and
grow by each question and answer. Every turn of every conversation is sent at once per round, as four users
typing would, to a mesh of three llama daemons:
- `cache-aware`: the default routing and prefix cache (`exact`), and `longest` reuse as a second line;
- `no reuse`: `--routing least-loaded --prefix-cache off`, every prompt prefilled whole: the baseline;
- `llama-server` (llama.cpp's own, built from the installed llama-cpp-python's sources) with one slot per
  conversation and `cache_prompt`, serving the same conversations with the same cores.
It reports time to first token, per turn: median and p95 over the conversations, and the ratio of turns ≥ 3
with reuse ÷ without (goal ≤ 0.25) and mesh ÷ llama-server (goal ≤ 1.0).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zmqllm.bench.chaos import percentile
from zmqllm.bench.http_processes import llama_server
from zmqllm.bench.mesh import _wait_for_peer, daemons
from zmqllm.client import AsyncClient

Progress = Callable[[str], None]
MODEL = "bundled:gemma3-270m"
TOPICS = ["the river", "the old bridge", "the market", "the lighthouse"]
GOAL_REUSE = 0.25
GOAL_SERVER = 1.0
FIRST_MEASURED_TURN = 3
"""Turns from here on are compared: by then each conversation's history is cached where it runs."""


def system_prompt(sentences: int = 48) -> str:
    """A deterministic system prompt of about 20 tokens a sentence (48: about 1,000 tokens)."""
    rules = ["answer in plain words", "give one example", "keep to the question", "name the place you mean",
             "say what you are unsure of", "use short sentences"]
    return "You are a guide to a small harbour town. " + " ".join(
        f"Rule {i + 1}: always {rules[i % len(rules)]}, and remember what the visitor said about item {i}."
        for i in range(sentences))


def question(conversation: int, turn: int) -> str:
    return f"Tell me one more thing about {TOPICS[conversation % len(TOPICS)]}, part {turn + 1}."


Ask = Callable[[str], tuple[float, str]]
"""Sends one prompt, returns (seconds to its first token, its text)."""


def converse(ask_for: list[Ask], turns: int, answer_tokens: int, system: str) -> list[list[float]]:
    """Run every conversation's turns, all conversations at once per turn; TTFT[conversation][turn]."""
    history = [system for _ in ask_for]
    ttft: list[list[float]] = [[] for _ in ask_for]

    def one(index: int, turn: int) -> None:
        prompt = f"{history[index]}\nVisitor: {question(index, turn)}\nGuide:"
        seconds, text = ask_for[index](prompt)
        ttft[index].append(seconds)
        history[index] = prompt + text

    for turn in range(turns):
        workers = [threading.Thread(target=one, args=(i, turn)) for i in range(len(ask_for))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if any(len(row) != turn + 1 for row in ttft):
            raise RuntimeError(f"a conversation failed at turn {turn + 1}")
    return ttft


def _mesh_asker(endpoint: str, answer_tokens: int) -> Ask:
    def ask(prompt: str) -> tuple[float, str]:
        async def go() -> tuple[float, str]:
            async with AsyncClient(endpoint, timeout=300) as client:
                await client.status()  # connected before the clock starts
                started = time.perf_counter()
                first = 0.0
                async for event in client.submit(prompt, model="gemma3-270m", max_tokens=answer_tokens,
                                                 params={"temperature": 0.0}):
                    if event["type"] == "token" and not first:
                        first = time.perf_counter() - started
                    elif event["type"] == "error":
                        raise RuntimeError(event["message"])
                    elif event["type"] == "done":
                        return first, event["text"]
            raise RuntimeError("the stream ended without done")

        return asyncio.run(go())

    return ask


def _server_asker(base: str, answer_tokens: int, slot: int) -> Ask:
    def ask(prompt: str) -> tuple[float, str]:
        body = json.dumps({"prompt": prompt, "n_predict": answer_tokens, "temperature": 0.0, "cache_prompt": True,
                           "id_slot": slot, "stream": True}).encode()
        request = urllib.request.Request(base + "/completion", body, {"Content-Type": "application/json"})
        started = time.perf_counter()
        first, pieces = 0.0, []
        with urllib.request.urlopen(request, timeout=300) as reply:
            for line in reply:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event.get("content") and not first:
                        first = time.perf_counter() - started
                    pieces.append(event.get("content", ""))
        return first, "".join(pieces)

    return ask


def _mesh_ttft(home: str, extra: tuple[str, ...], conversations: int, turns: int, answer_tokens: int,
               threads: int, system: str) -> list[list[float]]:
    llama = ("--engine", "llama", "--model", MODEL, "--threads", str(threads), *extra)
    with daemons(home) as start:
        _, origin = start("a", *llama)
        for name in ("b", "c"):
            start(name, *llama, "--peer", origin)
        for name in ("b", "c"):
            asyncio.run(_wait_for_peer(origin, name))
        return converse([_mesh_asker(origin, answer_tokens) for _ in range(conversations)], turns, answer_tokens,
                        system)


def _per_turn(ttft: list[list[float]]) -> list[dict[str, float]]:
    rows = []
    for turn in range(len(ttft[0])):
        values = [row[turn] * 1000 for row in ttft]
        rows.append({"turn": turn + 1, "p50_ms": round(statistics.median(values), 1),
                     "p95_ms": round(percentile(values, 0.95) or 0.0, 1)})
    return rows


def _late_median(ttft: list[list[float]]) -> float:
    return statistics.median(t for row in ttft for t in row[FIRST_MEASURED_TURN - 1:])


def run_cache(conversations: int = 4, turns: int = 8, answer_tokens: int = 16, threads: int = 1,
              server_binary: str | None = None, server_why: str = "", system_sentences: int = 48,
              progress: Progress = lambda line: None) -> dict[str, Any]:
    """TTFT per turn for each setting, and the headline ratios."""
    if turns < FIRST_MEASURED_TURN:
        raise ValueError(f"turns must be at least {FIRST_MEASURED_TURN}")
    system = system_prompt(system_sentences)
    settings = {"cache-aware (exact)": (), "cache-aware (longest)": ("--prefix-cache", "longest"),
                "no reuse": ("--routing", "least-loaded", "--prefix-cache", "off")}
    results: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory() as home:
        for label, extra in settings.items():
            progress(f"{label}: 3 llama nodes, {conversations} conversations x {turns} turns")
            results[label] = _mesh_ttft(home, extra, conversations, turns, answer_tokens, threads, system)
    if server_binary is not None:
        from zmqllm.engines.bundled import resolve_model_path
        from zmqllm.node.paths import cache_dir

        progress(f"llama-server, {conversations} slots with cache_prompt")
        model = resolve_model_path(MODEL, cache_dir() / "models")
        with llama_server(server_binary, model, threads * 2, 2048 * conversations, slots=conversations) as base:
            results["llama-server"] = converse([_server_asker(base, answer_tokens, i) for i in range(conversations)],
                                               turns, answer_tokens, system)
    late = {label: _late_median(ttft) for label, ttft in results.items()}
    reuse_ratio = late["cache-aware (exact)"] / late["no reuse"]
    server_ratio = late["cache-aware (exact)"] / late["llama-server"] if "llama-server" in late else None
    figures = {label: {"turns": _per_turn(ttft), f"turns_{FIRST_MEASURED_TURN}_on_median_ms": round(late[label] * 1000, 1)}
               for label, ttft in results.items()}
    return {
        "bench": "cache",
        "settings": {"nodes": 3, "conversations": conversations, "turns": turns, "answer_tokens": answer_tokens,
                     "threads_per_node": threads, "system_sentences": system_sentences, "model": MODEL},
        "figures": figures,
        "ratio": round(reuse_ratio, 3),
        "goal": f"turns >= {FIRST_MEASURED_TURN}: TTFT with reuse <= {GOAL_REUSE} x without; mesh <= "
                f"{GOAL_SERVER} x llama-server",
        "met": reuse_ratio <= GOAL_REUSE and (server_ratio is None or server_ratio <= GOAL_SERVER),
        "server_ratio": None if server_ratio is None else round(server_ratio, 3),
        "ratios": {label: {"vs_no_reuse": round(late[label] / late["no reuse"], 3),
                           "vs_llama_server": round(late[label] / late["llama-server"], 3) if "llama-server" in late
                           else None} for label in late},
        "server_missing": None if "llama-server" in late else server_why or "no llama-server binary",
        "summary": _summary(figures, late, reuse_ratio, server_ratio, server_why),
    }


def _summary(figures: dict[str, Any], late: dict[str, float], reuse_ratio: float, server_ratio: float | None,
             server_why: str) -> str:
    lines = ["cache: time to first token per turn, p50 / p95 ms (4 conversations at once, 3 llama nodes)"]
    for label, figure in figures.items():
        turns = "  ".join(f"{row['p50_ms']:.0f}/{row['p95_ms']:.0f}" for row in figure["turns"])
        lines.append(f"  {label:22s} {turns}")
    lines.append(f"  turns >= {FIRST_MEASURED_TURN}, median: " + ", ".join(
        f"{label} {seconds * 1000:.0f} ms" for label, seconds in late.items()))
    lines.append(f"  ratio reuse / no reuse: {reuse_ratio:.3f} (goal <= {GOAL_REUSE})")
    if server_ratio is not None:
        lines.append(f"  ratio mesh / llama-server: {server_ratio:.3f} (goal <= {GOAL_SERVER})")
    else:
        lines.append(f"  llama-server: not compared ({server_why or 'no binary'})")
    return "\n".join(lines)

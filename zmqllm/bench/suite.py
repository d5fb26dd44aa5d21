"""`zmqllm bench all`: every benchmark in turn, each as the CONTRACT's benchmark document.

Each benchmark keeps its own same-run baseline; this module only picks its sizes (`quick`: fewer runs and
tokens, the same code paths), brings the older reports to the common shape (`name`, `settings`, `figures`,
`ratio`, `goal`, `met`, plus `baseline`: what the ratio divides by), adds the machine to every settings, and
goes on past a benchmark that cannot run, whose result says why in one line (`error`).

A new benchmark joins by adding one `Benchmark` to `BENCHMARKS`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Progress = Callable[[str], None]
Runner = Callable[[bool, Progress], dict[str, Any]]
"""(quick, progress) → the benchmark's document."""

MODEL = "bundled:gemma3-270m"


@dataclass(frozen=True)
class Benchmark:
    name: str
    run: Runner


def machine() -> dict[str, Any]:
    """Where the figures were measured: they mean little without it."""
    return {"cores": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(terse=True), "versions": {
                package: _version(package) for package in ("zmqllm", "pyzmq", "llama-cpp-python", "msgpack")}}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _threads() -> int:
    """llama threads: all cores but one, left for the relaying processes (as `bench overhead`)."""
    return max(1, (os.cpu_count() or 2) - 1)


def document(name: str, settings: dict[str, Any], figures: dict[str, Any], ratio: float | None,
             goal: dict[str, Any] | None, met: bool | None, baseline: str, summary: str) -> dict[str, Any]:
    return {"name": name, "settings": settings, "figures": figures, "ratio": ratio, "goal": goal, "met": met,
            "baseline": baseline, "summary": summary}


def _figures(report: dict[str, Any], *drop: str) -> dict[str, Any]:
    """An older report's fields as figures, each list of per-run numbers as its median, min-max and runs."""
    from zmqllm.bench.http import spread

    figures: dict[str, Any] = {}
    for key, value in report.items():
        if key in ("bench", "summary", "ratio", *drop):
            continue
        numbers = isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value)
        figures[key] = spread(value, 3) if numbers else value
    return figures


# -- each benchmark at its two sizes ---------------------------------------------------------------------------

def _messaging(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import mesh

    tokens, runs = (20_000, 2) if quick else (20_000, 5)
    report = mesh.run_messaging(tokens=tokens, runs=runs)
    return document("messaging", {"tokens": tokens, "runs": runs, "engine": "echo, unlimited rate",
                                  "path": "executor B -> origin A -> client"},
                    _figures(report), report["ratio"], {"ratio_min": 0.5}, report["ratio"] >= 0.5,
                    "mesh tok/s ÷ raw pyzmq+msgpack over the same two hops", report["summary"])


def _overhead(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import mesh

    tokens, runs, threads = (32, 2, _threads()) if quick else (128, 5, _threads())
    report = mesh.run_overhead(tokens=tokens, runs=runs, threads=threads)
    met = report["ratio"] >= 0.97 and report["ttft_added_ms"] <= 5
    return document("overhead", {"tokens": tokens, "runs": runs, "threads": threads, "model": MODEL, "slots": 1},
                    _figures(report), report["ratio"], {"ratio_min": 0.97, "ttft_added_ms_max": 5}, met,
                    "decode tok/s through client -> A -> B ÷ llama-cpp-python in process, same threads",
                    report["summary"])


def _concurrency(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import concurrency

    runs, widths, threads, tokens = (1, (2,), 1, 64) if quick else (3, (4, 8), 2, concurrency.TOKENS)
    report = concurrency.run_concurrency(runs=runs, threads=threads, widths=widths, build=not quick,
                                         tokens=tokens, progress=progress)
    rows = report["rows"]
    against_server = all(row["baseline"].startswith("llama-server") for row in rows)
    return document("concurrency", {"runs": runs, "widths": list(widths), "threads": threads, "model": MODEL,
                                    "slots": "= width", "tokens": tokens,
                                    "ctx_per_slot": concurrency.CTX_PER_SLOT, "baseline": rows[0]["baseline"]},
                    {"rows": rows}, rows[-1]["ratio"], {"ratio_min": 1.0},
                    all(row["ratio"] >= 1.0 for row in rows) if against_server else None,
                    f"aggregate tok/s at {rows[-1]['width']} streams ÷ {rows[-1]['baseline']}"
                    + ("" if against_server else " (no goal without llama-server)"), report["summary"])


def _failover(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import mesh

    runs, heartbeats = (2, (0.1,)) if quick else (10, (0.5, 0.1))
    report = mesh.run_failover(runs=runs, heartbeats=heartbeats)
    frozen = [row for row in report["series"] if row["signal"] == "SIGSTOP"]
    ratio = round(max(row["median_s"] / row["detection_bound_s"] for row in frozen), 3)
    return document("failover", {"runs": runs, "heartbeat_intervals": list(heartbeats), "dead_after": 4,
                                 "engine": "echo 100 tok/s", "kill_at_seq": 10},
                    _figures(report, "runs"), ratio, None, None,
                    "SIGSTOP: median time to the next token ÷ the detection bound (heartbeat x dead_after); "
                    "no goal: the bound is the setting", report["summary"])


def _failover_origin(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import mesh

    report = mesh.run_origin_failover(runs=3 if quick else 10)
    report["name"] = "failover-origin"
    report["baseline"] = "delay after the client's node is SIGKILLed ÷ the ordinary gap between two tokens"
    return report


def _workflow(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import workflow

    runs, llama = (1, False) if quick else (3, True)
    report = workflow.run_workflow(runs=runs, llama=llama, threads=1)
    echo = report["rows"][0]
    return document("workflow", {"runs": runs, "spec": workflow.SPEC.name, "echo_rate": workflow.ECHO_RATE,
                                 "slots": 1, "llama_part": llama, "threads": 1},
                    {"rows": report["rows"]}, echo["ratio"], {"ratio_max": 0.40}, echo["ratio"] <= 0.40,
                    "wall time of the map-reduce workflow on 3 echo nodes ÷ on 1", report["summary"])


def _dash(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import dash

    runs, tokens, rates = (1, 20_000, (0, dash.GOAL_RATE)) if quick else (5, dash.IMPACT_TOKENS, dash.RATES)
    report = dash.run_dash(runs=runs, tokens=tokens, rates=rates)
    return document("dash", {"runs": runs, "tokens": tokens, "rates": list(rates), "measure_s": dash.MEASURE_S},
                    _figures(report, "runs", "tokens_per_run"), report["ratio"], {"ratio_min": dash.GOAL_RATIO},
                    report["ratio"] >= dash.GOAL_RATIO,
                    "a daemon's tok/s with a dashboard attached ÷ with nothing watching", report["summary"])


def _http(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import http

    report = http.run_http(threads=_threads(), quick=quick, echo_only=quick, build=not quick, progress=progress)
    report["baseline"] = "the gateway's tok/s ÷ the native client's on the same daemon"
    return report


def _chaos(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import chaos

    settings = (chaos.ChaosSettings(nodes=3, duration_s=10.0, seed=42, clients=2, calm_s=4.0) if quick else
                chaos.ChaosSettings(nodes=5, duration_s=60.0, seed=42, calm_s=chaos.default_calm_s(60.0)))
    report = chaos.run_chaos(settings, progress=progress)
    report["baseline"] = "p50 latency under faults ÷ in the calm phase before them; goal: no invariant broken"
    return report


def _cache(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import cache
    from zmqllm.bench.concurrency import pick_server

    binary, why = pick_server(None, build=not quick, progress=progress)
    sizes = dict(conversations=2, turns=3, answer_tokens=4, system_sentences=8) if quick else {}
    report = cache.run_cache(server_binary=binary, server_why=why, progress=progress, **sizes)
    report["name"] = "cache"
    report["baseline"] = ("TTFT of turns >= 3 with cache-aware routing and exact reuse ÷ least-loaded without "
                          "reuse, same conversations; and ÷ llama-server with cache_prompt")
    return report


def _scale(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import scale

    return scale.run_scale(scale.ScaleSettings.quick() if quick else scale.ScaleSettings(), progress)


def _routing(quick: bool, progress: Progress) -> dict[str, Any]:
    from zmqllm.bench import routing

    return routing.run_routing(routing.RoutingSettings.quick() if quick else routing.RoutingSettings(), progress)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("messaging", _messaging),
    Benchmark("overhead", _overhead),
    Benchmark("concurrency", _concurrency),
    Benchmark("failover", _failover),
    Benchmark("failover-origin", _failover_origin),
    Benchmark("workflow", _workflow),
    Benchmark("dash", _dash),
    Benchmark("http", _http),
    Benchmark("chaos", _chaos),
    Benchmark("cache", _cache),
    Benchmark("scale", _scale),
    Benchmark("routing", _routing),
)
NAMES = tuple(b.name for b in BENCHMARKS)


def run_all(quick: bool = False, only: Sequence[str] = (), progress: Progress = lambda line: None
            ) -> list[dict[str, Any]]:
    """Every benchmark (or those named in `only`, in the suite's order), one after another. A benchmark that
    raises is recorded with its reason and the suite goes on; Ctrl-C stops it (each benchmark reaps its own)."""
    chosen = [b for b in BENCHMARKS if not only or b.name in only]
    where = machine()
    results = []
    for index, bench in enumerate(chosen, start=1):
        label = f"[{index}/{len(chosen)}] {bench.name}"
        progress(f"{label}: running{' (quick)' if quick else ''}")
        started = time.monotonic()
        try:
            result = bench.run(quick, lambda line, label=label: progress(f"{label}: {line}"))
        except Exception as exc:  # any failure of one benchmark is its result; the others still run
            result = document(bench.name, {}, {}, None, None, None, "", "")
            result["error"] = one_line(exc)
            result["summary"] = f"{bench.name}: could not run: {result['error']}"
        result["settings"] = {**result.get("settings", {}), "quick": quick, "machine": where}
        result["wall_s"] = round(time.monotonic() - started, 1)
        progress(f"{label}: {verdict(result)} ({result['wall_s']:g} s)")
        results.append(result)
    return results


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, RuntimeError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


def verdict(result: dict[str, Any]) -> str:
    """One line: the headline ratio with its baseline and goal, met or not, or why it could not run."""
    if result.get("error"):
        return f"could not run: {result['error']}"
    ratio = result.get("ratio")
    shown = "n/a" if ratio is None else f"{ratio:g}"
    goal = result.get("goal")
    judged = {True: "met", False: "NOT met", None: "no goal" if goal is None else "not judged"}[result.get("met")]
    return f"ratio {shown} ({result.get('baseline', '')}); goal: {goal_text(goal)}: {judged}"


def goal_text(goal: Any) -> str:
    """A goal as people read it: `ratio_min 0.5, ...` for a document's dict, the number itself, or none."""
    if isinstance(goal, dict):
        return ", ".join(f"{key} {value}" for key, value in goal.items())
    return "none" if goal is None else str(goal)


def human(results: list[dict[str, Any]], wall_s: float) -> str:
    """Each benchmark's own summary, then one verdict line per benchmark."""
    lines = []
    for result in results:
        lines += [result.get("summary") or f"{result['name']}:", ""]
    lines.append(f"bench all: {len(results)} benchmarks in {wall_s:.0f} s")
    lines += [f"  {result['name']}: {verdict(result)}" for result in results]
    return "\n".join(lines)

"""`zmqllm bench all --report DIR`: the figures as a Markdown page with charts, for people who would rather look.

Writes DIR/index.md (the verdict table, the machine, each benchmark's summary) and one PNG per chart whose
benchmark ran: scaling efficiency vs nodes (scheduler vs static pinning), latency CDFs per routing policy, tok/s
vs concurrent streams (zmqllm vs its baseline, llama-server where it was there), and the chaos run's fault
timeline. matplotlib is imported here only (Agg backend, no display), so the rest of the CLI never needs it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'zmqllm[report]'"


class ReportError(Exception):
    """The report cannot be written; the message is one line saying what to do."""


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError(f"--report needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(results: list[dict[str, Any]], directory: Path, command: list[str], wall_s: float) -> list[Path]:
    """DIR/index.md and the charts; the files written. ReportError when matplotlib is missing or DIR cannot be
    written."""
    plt = require_matplotlib()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the report folder {directory}: {exc.strerror or exc}") from None
    by_name = {result["name"]: result for result in results if not result.get("error")}
    charts: list[tuple[str, Path]] = []
    for title, filename, draw in CHARTS:
        if all(name in by_name for name in draw.needs):  # type: ignore[attr-defined]
            figure = draw(plt, by_name)
            path = directory / filename
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            charts.append((title, path))
    index = directory / "index.md"
    index.write_text(_markdown(results, charts, command, wall_s), encoding="utf-8")
    return [index, *(path for _, path in charts)]


def _markdown(results: list[dict[str, Any]], charts: list[tuple[str, Path]], command: list[str],
              wall_s: float) -> str:
    from zmqllm.bench.suite import goal_text, machine, verdict

    where = machine()
    versions = ", ".join(f"{name} {version or 'not installed'}" for name, version in where["versions"].items())
    lines = ["# zmqllm benchmarks", "",
             f"`{shlex.join(command)}`: {len(results)} benchmarks in {wall_s:.0f} s on {where['cores']} cores "
             f"({where['cpu']}), Python {where['python']}, {versions}.", "",
             "Every ratio divides by a baseline measured in the same run (only same-run ratios mean anything on a "
             "shared machine).", "",
             "| benchmark | ratio | baseline | goal | met | wall s |", "| --- | --- | --- | --- | --- | --- |"]
    for result in results:
        if result.get("error"):
            lines.append(f"| {result['name']} | — | could not run: {_cell(result['error'])} | — | — | "
                         f"{result.get('wall_s', '')} |")
            continue
        goals = goal_text(result.get("goal"))
        met = {True: "met", False: "**NOT met**", None: "—"}[result.get("met")]
        ratio = "—" if result.get("ratio") is None else f"{result['ratio']:g}"
        lines.append(f"| {result['name']} | {ratio} | {_cell(result.get('baseline', ''))} | {_cell(goals)} | {met} | "
                     f"{result.get('wall_s', '')} |")
    for title, path in charts:
        lines += ["", f"## {title}", "", f"![{title}]({path.name})"]
    lines += ["", "## Summaries", ""]
    for result in results:
        lines += ["```", result.get("summary") or f"{result['name']}: {verdict(result)}", "```", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# -- the charts: each a function of pyplot and the results by name, with the benchmarks it needs ----------------

Chart = Callable[[Any, dict[str, dict[str, Any]]], Any]


def _needs(*names: str) -> Callable[[Chart], Chart]:
    def mark(draw: Chart) -> Chart:
        draw.needs = names  # type: ignore[attr-defined]
        return draw
    return mark


@_needs("scale")
def scale_chart(plt: Any, by_name: dict[str, dict[str, Any]]) -> Any:
    from zmqllm.bench.scale import GOALS

    sizes = by_name["scale"]["figures"]["sizes"]
    nodes = [entry["nodes"] for entry in sizes]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(nodes, [e["scheduler"]["efficiency"] for e in sizes], "o-", label="scheduler (submitted to one node)")
    axes.plot(nodes, [e["pinned"]["efficiency"] for e in sizes], "s--", label="static pinning (the ideal)")
    goals = [(n, goal) for n, goal in GOALS.items() if n in nodes]
    if goals:
        axes.scatter(*zip(*goals), marker="_", s=400, color="red", label="goal", zorder=3)
    axes.set(xlabel="echo nodes (N)", ylabel="aggregate tok/s ÷ (N × one node)", xticks=nodes,
             ylim=(min(0.8, *(e["scheduler"]["efficiency"] for e in sizes)) - 0.02, 1.05),
             title="Scaling efficiency, saturating closed loop")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return figure


@_needs("routing")
def routing_chart(plt: Any, by_name: dict[str, dict[str, Any]]) -> Any:
    figure, axes = plt.subplots(figsize=(6, 4))
    for policy, part in by_name["routing"]["figures"]["policies"].items():
        cdf = part["cdf_s"]
        if cdf:
            axes.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], label=f"{policy} (p99 {part['p99_s']} s)")
    axes.set(xscale="log", xlabel="task latency, submit to done (s)", ylabel="fraction of tasks",
             title="Latency by routing policy, uneven mesh at ~80 % load")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right")
    return figure


@_needs("concurrency")
def concurrency_chart(plt: Any, by_name: dict[str, dict[str, Any]]) -> Any:
    import statistics

    rows = by_name["concurrency"]["figures"]["rows"]
    widths = [row["width"] for row in rows]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(widths, [statistics.median(row["mesh_tok_s"]) for row in rows], "o-", label="zmqllm (slots = streams)")
    axes.plot(widths, [statistics.median(row["baseline_tok_s"]) for row in rows], "s--",
              label=rows[0]["baseline"].split(" (")[0].replace(f" -np {widths[0]}", " -np = streams"))
    axes.set(xlabel="concurrent streams", ylabel="aggregate tok/s", xticks=widths, ylim=(0, None),
             title="Concurrent greedy streams, bundled model")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


@_needs("chaos")
def failover_chart(plt: Any, by_name: dict[str, dict[str, Any]]) -> Any:
    chaos = by_name["chaos"]
    timeline = [row for row in chaos["figures"]["timeline"] if not row["outcome"].startswith("skipped")]
    nodes = sorted({row["node"] for row in timeline}) or ["-"]
    figure, axes = plt.subplots(figsize=(7, 0.6 * len(nodes) + 1.8))
    for fault, marker in (("kill", "x"), ("stop", "s"), ("restart", "^")):
        rows = [row for row in timeline if row["fault"] == fault]
        if rows:
            axes.scatter([row["at_s"] for row in rows], [nodes.index(row["node"]) for row in rows], marker=marker,
                         label=fault, s=60)
    for row in timeline:
        if "hold_s" in row:
            axes.plot([row["at_s"], row["at_s"] + row["hold_s"]], [nodes.index(row["node"])] * 2, color="grey")
    failovers = chaos["figures"]["failovers"]
    axes.set(yticks=range(len(nodes)), yticklabels=nodes, xlabel="seconds after the calm phase",
             title=f"Chaos: faults by node (failovers: {failovers['origin']} origin, {failovers['executor']} "
                   f"executor; violations {chaos['figures']['violations']})")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small", ncol=4)
    return figure


CHARTS: tuple[tuple[str, str, Chart], ...] = (
    ("Scaling efficiency vs nodes", "scale-efficiency.png", scale_chart),
    ("Latency CDF per routing policy", "routing-latency-cdf.png", routing_chart),
    ("Tokens/s vs concurrent streams", "concurrency-tok-s.png", concurrency_chart),
    ("Failover timeline (chaos)", "failover-timeline.png", failover_chart),
)

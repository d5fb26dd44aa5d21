"""`zmqllm bench scale`, `bench routing` and `bench all` at tiny sizes: the JSON shape and the report files, not
the speed (the figures belong to the benchmarks themselves). Real daemons, the real command line, ports from 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from zmqllm.bench.suite import NAMES, document, human, one_line, verdict

CONTRACT_FIELDS = {"name", "settings", "figures", "ratio", "goal", "met"}


@pytest.mark.timeout(60)
def test_bench_scale_reports_efficiency_per_size_for_both_modes(zmqllm_env):
    proc = run_cli(zmqllm_env, "bench", "scale", "--sizes", "1,2", "--runs", "1", "--window", "1", "--tokens", "20",
                   "--json", timeout=55)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert CONTRACT_FIELDS <= report.keys() and report["name"] == "scale"
    assert report["settings"]["sizes"] == [1, 2] and report["settings"]["tokens"] == 20
    sizes = report["figures"]["sizes"]
    assert [entry["nodes"] for entry in sizes] == [1, 2]
    for entry in sizes:
        for mode in ("scheduler", "pinned"):
            part = entry[mode]
            assert part["tok_s"]["min"] <= part["tok_s"]["median"] <= part["tok_s"]["max"]
            assert part["efficiency"] > 0 and part["tasks"] > 0 and 0 < part["p50_s"] <= part["p99_s"]
    assert report["ratio"] == sizes[-1]["scheduler"]["efficiency"]
    assert report["goal"] == {"efficiency_at_4": 0.97, "efficiency_at_8": 0.95}
    assert report["met"] is None  # neither 4 nor 8 nodes measured: nothing to judge
    assert "N=2 run 1/1" in proc.stderr  # progress on stderr


@pytest.mark.timeout(60)
def test_bench_routing_runs_each_policy_on_daemons_started_with_it(zmqllm_env):
    proc = run_cli(zmqllm_env, "bench", "routing", "--policies", "cache-aware,round-robin", "--duration", "2",
                   "--runs", "1", "--seed", "3", "--json", timeout=55)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert CONTRACT_FIELDS <= report.keys() and report["name"] == "routing"
    assert report["settings"]["policies"] == ["cache-aware", "round-robin"] and report["settings"]["seed"] == 3
    policies = report["figures"]["policies"]
    assert set(policies) == {"cache-aware", "round-robin"}
    for part in policies.values():
        assert part["tasks"] > 0 and part["failed"] == 0
        assert 0 < part["p50_s"] <= part["p99_s"] and len(part["cdf_s"]) == 101
        assert part["cdf_s"] == sorted(part["cdf_s"])
    assert policies["cache-aware"]["tasks"] == policies["round-robin"]["tasks"]  # the same arrivals
    assert report["ratio"] == report["figures"]["ratios"]["p99_over_round-robin"]
    assert report["goal"] == {"p99_over_round-robin": 0.7, "p99_over_power-of-two": 1.0}
    assert isinstance(report["met"], bool)


def test_bench_routing_refuses_a_comparison_without_the_scheduler(zmqllm_env):
    proc = run_cli(zmqllm_env, "bench", "routing", "--policies", "random,round-robin")
    assert proc.returncode == 2 and "cache-aware" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(zmqllm_env, "bench", "all", "--only", "scale,nope")
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_bench_all_quick_json_and_report(zmqllm_env, tmp_path: Path):
    report_dir = tmp_path / "report"
    proc = run_cli(zmqllm_env, "bench", "all", "--quick", "--only", "scale", "--json", "--report", str(report_dir),
                   timeout=55)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert [r["name"] for r in results] == ["scale"]
    scale = results[0]
    assert CONTRACT_FIELDS <= scale.keys() and scale["settings"]["quick"] is True
    assert scale["settings"]["runs"] == 1 and scale["settings"]["sizes"] == [1, 2, 4, 8]
    where = scale["settings"]["machine"]
    assert where["cores"] >= 1 and where["cpu"] and where["python"]
    assert {"pyzmq", "llama-cpp-python"} <= where["versions"].keys()
    assert "[1/1] scale: running (quick)" in proc.stderr
    index = (report_dir / "index.md").read_text(encoding="utf-8")
    assert "| scale |" in index and "![Scaling efficiency vs nodes](scale-efficiency.png)" in index
    assert (report_dir / "scale-efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (report_dir / "routing-latency-cdf.png").exists()  # routing did not run: no chart for it


def test_a_benchmark_that_cannot_run_is_one_line_in_its_result():
    result = document("x", {}, {}, None, None, None, "", "")
    result["error"] = one_line(RuntimeError("peer b never joined\n  after 30 s"))
    assert verdict(result) == "could not run: peer b never joined after 30 s"
    assert one_line(ValueError("bad")) == "ValueError: bad"
    assert "x: could not run" in human([result], 1.0)


def test_every_benchmark_of_the_cli_is_in_the_suite():
    from zmqllm.cli.bench import BENCH_NAMES

    assert set(BENCH_NAMES) - {"all"} <= set(NAMES)


def test_report_charts_from_documents(tmp_path: Path):
    """Every chart draws from the documents' shapes (the benchmarks themselves are too slow to run here)."""
    from zmqllm.bench.report import write_report

    sizes = [{"nodes": n, "scheduler": {"efficiency": 0.99}, "pinned": {"efficiency": 1.0}} for n in (1, 2, 4, 8)]
    results = [
        {"name": "scale", "figures": {"sizes": sizes}, "ratio": 0.99, "goal": {"efficiency_at_8": 0.95}, "met": True},
        {"name": "routing", "ratio": 0.5, "goal": None, "met": None,
         "figures": {"policies": {"cache-aware": {"cdf_s": [0.1, 0.2, 0.4], "p99_s": 0.4}}}},
        {"name": "concurrency", "ratio": 1.0, "goal": None, "met": None, "figures": {"rows": [
            {"width": 4, "mesh_tok_s": [100.0], "baseline_tok_s": [98.0], "baseline": "llama-server -np 4"},
            {"width": 8, "mesh_tok_s": [150.0], "baseline_tok_s": [149.0], "baseline": "llama-server -np 8"}]}},
        {"name": "chaos", "ratio": 1.1, "goal": None, "met": True, "settings": {"calm_s": 3},
         "figures": {"timeline": [{"at_s": 1.0, "fault": "kill", "node": "n1", "outcome": "killed"},
                                  {"at_s": 2.0, "fault": "stop", "node": "n2", "hold_s": 1.5, "outcome": "stopped"},
                                  {"at_s": 3.0, "fault": "restart", "node": "n1", "outcome": "back"}],
                     "failovers": {"origin": 1, "executor": 2}, "violations": 0}},
        {"name": "http", "error": "no part could run", "wall_s": 1.0},
    ]
    written = write_report(results, tmp_path, ["zmqllm", "bench", "all"], 12.0)
    assert [p.name for p in written] == ["index.md", "scale-efficiency.png", "routing-latency-cdf.png",
                                         "concurrency-tok-s.png", "failover-timeline.png"]
    index = written[0].read_text(encoding="utf-8")
    assert "| http | — | could not run: no part could run |" in index and "`zmqllm bench all`" in index

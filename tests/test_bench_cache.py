"""`zmqllm bench cache` at a tiny size: real llama daemons, every setting, the JSON a report reads."""

from __future__ import annotations

import pytest

from zmqllm.bench.cache import FIRST_MEASURED_TURN, run_cache

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
pytestmark = [pytest.mark.llama, pytest.mark.timeout(300)]


def test_a_tiny_cache_benchmark_reports_every_setting_per_turn() -> None:
    lines: list[str] = []
    result = run_cache(conversations=2, turns=FIRST_MEASURED_TURN, answer_tokens=4, system_sentences=8,
                       server_binary=None, server_why="not built in the suite", progress=lines.append)
    assert result["bench"] == "cache" and isinstance(result["met"], bool) and result["ratio"] > 0
    assert set(result["figures"]) == {"cache-aware (exact)", "cache-aware (longest)", "no reuse"}
    for figure in result["figures"].values():
        assert [row["turn"] for row in figure["turns"]] == [1, 2, 3]
        assert all(0 < row["p50_ms"] <= row["p95_ms"] for row in figure["turns"])
    assert result["server_ratio"] is None and result["server_missing"] == "not built in the suite"
    assert len(lines) == 3 and "llama-server: not compared" in result["summary"]

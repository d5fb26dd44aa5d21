"""The three example workflows, end to end on a 3-node mesh serving the bundled model (real inference).

Three daemons with one thread each on two cores: the ensemble's three branches
share the cores for a few seconds; every other step runs one or two at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, launch, private_env, run_cli, states, wait_until
from zmqllm.workflow import split_text

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")

pytestmark = pytest.mark.llama
WORKFLOWS = Path(__file__).resolve().parent.parent / "configs" / "workflows"
DOCUMENT = "\n\n".join(
    f"Part {i}. The harbour town of Velm grew around its lighthouse. Fishermen sold their catch at dawn, "
    f"and the market closed at noon. In year {1800 + 40 * i} a storm destroyed the old pier, and the town "
    f"rebuilt it in stone. Merchants later brought tea, salt and wool, and the town's school opened. "
    f"Today visitors come for the festival of lights, held every autumn since the rebuilding." for i in range(1, 7))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return private_env(tmp_path_factory.mktemp("llama-workflows"))


@pytest.fixture(scope="module")
def mesh(env: dict[str, str]) -> Iterator[list[Daemon]]:
    llama = ("--model", "bundled:gemma3-270m", "--threads", "1")
    nodes: list[Daemon] = []
    try:
        nodes.append(launch(env, "a", *llama, engine="llama"))
        for name in ("b", "c"):
            nodes.append(launch(env, name, *llama, "--peer", nodes[0].endpoint, engine="llama"))
        wait_until(lambda: len(states(nodes[0])) == 3, 10, what="llama mesh")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _run(env: dict[str, str], endpoint: str, name: str, input: str) -> list[dict[str, Any]]:
    result = run_cli(env, "run", str(WORKFLOWS / f"{name}.toml"), "--input", input, "--json", "--connect", endpoint,
                     "--timeout", "30", timeout=240)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    final = events[-1]
    assert final["type"] == "done" and final["state"] == "done", final
    assert final["output"].strip(), final
    assert all(t["tokens"] > 0 and t["executed_by"] in ("a", "b", "c") for t in final["tasks"])
    return events


def test_ensemble_branches_overlap_on_distinct_peers(mesh: list[Daemon], env: dict[str, str]) -> None:
    final = _run(env, mesh[1].endpoint, "ensemble", "What is the largest planet in the solar system?")[-1]
    branches = [t for t in final["tasks"] if t["step"] == "answer"]
    assert len(branches) == 3 and len({t["executed_by"] for t in branches}) >= 2, branches
    assert max(t["started"] for t in branches) < min(t["ended"] for t in branches), "the branches ran at once"
    answers = {t["key"] for t in branches}
    assert answers == {"answer#1", "answer#2", "answer#3"}


def test_map_reduce_summarises_each_chunk_then_the_whole(mesh: list[Daemon], env: dict[str, str]) -> None:
    final = _run(env, mesh[0].endpoint, "map-reduce-summary", DOCUMENT)[-1]
    keys = [t["key"] for t in final["tasks"]]
    chunks = [k for k in keys if k.startswith("summary#")]
    assert len(chunks) >= 2 and keys[-1] == "summary:merge", keys
    assert len({t["executed_by"] for t in final["tasks"]}) >= 2  # the map phase spread over the mesh


def test_draft_critique_revise_stops_at_its_pattern_or_round_limit(mesh: list[Daemon], env: dict[str, str]) -> None:
    final = _run(env, mesh[2].endpoint, "draft-critique-revise", "Why do ships float?")[-1]
    polish = next(step for step in final["steps"] if step["name"] == "polish")
    assert polish["state"] == "done" and polish["ended_by"] in ("pattern", "rounds") and 1 <= polish["rounds"] <= 3
    critiques = [t for t in final["tasks"] if t["key"].endswith(".critique")]
    assert len(critiques) == polish["rounds"]


def test_chunk_tokens_counts_with_the_orchestrating_models_tokenizer(mesh: list[Daemon], env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    """Eight seven-digit numbers are eight words but about 60 tokens for Gemma (a token per digit): by words they
    would fit one 20-token chunk; by the model's count they take several."""
    numbers = " ".join(str(1_234_567 + 1_111_111 * i) for i in range(8))
    spec = tmp_path / "numbers.toml"
    spec.write_text('name = "numbers"\noutput = "echo"\n[defaults]\nmax_tokens = 1\ntemperature = 0.0\n'
                    '[[steps]]\nname = "echo"\nsplit = "input"\nchunk_tokens = 20\nprompt = "{chunk}"\n'
                    'merge = "concat"\n')
    result = run_cli(env, "run", str(spec), "--input", numbers, "--json", "--connect", mesh[0].endpoint,
                     "--timeout", "30", timeout=120)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.splitlines()[-1])
    chunks = [t for t in final["tasks"] if t["key"].startswith("echo#")]
    assert len(chunks) >= 3, chunks
    assert split_text(numbers, chunk_tokens=20) == [numbers]  # what counting words would have done

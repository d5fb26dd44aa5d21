"""One daemon, several real GGUF models: each loaded on first use, the least recently used unloaded, a request
arriving during a load served after it, a corrupt file named and the rest serving.

The second model is a copy of the bundled one under another name (the mechanism is the same for any two files);
`max_loaded 1` makes every switch a real unload and load of llama.cpp weights.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from conftest import Daemon, launch, private_env, run_cli, wait_until
from zmqllm.client import AsyncClient

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
pytestmark = [pytest.mark.llama, pytest.mark.timeout(240)]

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> tuple[Daemon, dict[str, str]]:
    from zmqllm.engines.bundled import resolve_model_path

    home = tmp_path_factory.mktemp("models-home")
    env = private_env(home)
    bundled = resolve_model_path("bundled:gemma3-270m", home / "cache" / "models")
    folder = home / "models"
    folder.mkdir()
    shutil.copy(bundled, folder / "gemma-a.gguf")
    (folder / "notes.gguf").write_text("not a model")  # skipped at the scan, with a warning naming it
    (folder / "broken.gguf").write_bytes(b"GGUF" + bytes(64))  # looks like one until loaded
    other = home / "gemma-b.gguf"
    shutil.copy(bundled, other)
    daemon = launch(env, "host", "--models-dir", str(folder), "--model", str(other), "--max-loaded", "1",
                    "--threads", "1", engine="llama")
    try:
        yield daemon, env
    finally:
        daemon.stop()


def ask(daemon: Daemon, model: str, count: int = 1) -> list[dict]:
    """`count` greedy completions of `model` submitted at once; the final event of each."""
    async def one(client: AsyncClient) -> dict:
        events = [e async for e in client.submit(PROMPT, model=model, max_tokens=8, params={"temperature": 0.0})]
        return events[-1]

    async def go() -> list[dict]:
        async with AsyncClient(daemon.endpoint, timeout=120) as client:
            return list(await asyncio.gather(*(one(client) for _ in range(count))))

    return asyncio.run(go())


def models_of(env: dict[str, str], daemon: Daemon) -> dict[str, dict]:
    result = run_cli(env, "models", "--connect", daemon.endpoint, "--json")
    assert result.returncode == 0, result.stderr
    return {row["model"]: row for row in json.loads(result.stdout)}


def test_every_model_is_listed_and_none_loaded_before_use(host):
    daemon, env = host
    rows = models_of(env, daemon)
    assert sorted(rows) == ["broken", "gemma-a", "gemma-b"]  # notes.gguf is no GGUF: not served
    assert all(row["peers"] == ["host"] and row["loaded_on"] == [] for row in rows.values())
    assert "notes.gguf" in daemon.log() and "not a GGUF file" in daemon.log()
    listing = run_cli(env, "peers", "--connect", daemon.endpoint)
    assert "[gemma-a],[gemma-b]" in listing.stdout.replace("[broken],", ""), listing.stdout  # none loaded yet


def test_max_loaded_one_swaps_models_and_a_third_request_brings_the_first_back(host):
    daemon, env = host
    first = ask(daemon, "gemma-a")[0]
    assert first["type"] == "done" and first["text"], first
    assert models_of(env, daemon)["gemma-a"]["loaded_on"] == ["host"]
    second = ask(daemon, "gemma-b")[0]
    assert second["type"] == "done" and second["text"] == first["text"]  # the same weights, another name
    rows = models_of(env, daemon)
    assert rows["gemma-b"]["loaded_on"] == ["host"] and rows["gemma-a"]["loaded_on"] == []
    third = ask(daemon, "gemma-a")[0]
    assert third["type"] == "done" and third["text"] == first["text"]
    assert models_of(env, daemon)["gemma-a"]["loaded_on"] == ["host"]
    assert daemon.log().count("unloading model gemma-a") >= 1 and daemon.log().count("unloading model gemma-b") >= 1


def test_requests_arriving_during_a_load_wait_and_succeed(host):
    daemon, env = host
    if models_of(env, daemon)["gemma-b"]["loaded_on"]:
        ask(daemon, "gemma-a")  # make gemma-b the one to load
    loads_before = daemon.log().count("loaded model gemma-b")
    finals = ask(daemon, "gemma-b", count=3)
    assert [f["type"] for f in finals] == ["done"] * 3 and len({f["text"] for f in finals}) == 1
    wait_until(lambda: daemon.log().count("loaded model gemma-b") == loads_before + 1, 5, what="one load")


def test_a_corrupt_model_fails_naming_its_file_and_the_others_keep_serving(host):
    daemon, env = host
    broken = ask(daemon, "broken")[0]
    assert broken["type"] == "error" and "broken.gguf" in broken["message"], broken
    wait_until(lambda: "broken" not in models_of(env, daemon), 5, what="the broken model withdrawn")
    assert ask(daemon, "gemma-a")[0]["type"] == "done"

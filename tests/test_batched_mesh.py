"""Continuous batching through a daemon: a llama node with slots = 4 serving 8 concurrent clients (real model)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Daemon, launch, private_env, run_cli

from zmqllm.client import AsyncClient

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")

pytestmark = pytest.mark.llama
PROMPTS = ["The capital of France is", "Once upon a time", "The best way to cook rice is", "Water boils at",
           "My favourite colour is", "The train left the station", "In the year 1900", "Cats and dogs"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return private_env(tmp_path_factory.mktemp("batched"))


@pytest.fixture(scope="module")
def node(env: dict[str, str]) -> Iterator[Daemon]:
    daemon = launch(env, "a", "--model", "bundled:gemma3-270m", "--threads", "2", "--slots", "4",
                    "--ctx", "512", "--queue-limit", "4", engine="llama")
    try:
        yield daemon
    finally:
        daemon.stop()


def test_eight_requests_on_four_slots_all_complete_four_at_once_and_a_ninth_is_busy(node: Daemon, env: dict[str, str]) -> None:
    models = json.loads(run_cli(env, "models", "--json", "--connect", node.endpoint).stdout)
    assert models[0]["slots"] == 4 and models[0]["ctx"] == 512  # context per slot

    async def run() -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
        async with AsyncClient(node.endpoint, timeout=30) as client, AsyncClient(node.endpoint) as watcher:
            async def one(prompt: str) -> list[dict[str, Any]]:
                return [e async for e in client.submit(prompt, max_tokens=64, params={"temperature": 0.0})]

            jobs = [asyncio.create_task(one(prompt)) for prompt in PROMPTS]
            samples = [(await watcher.status())["tasks"]]
            deadline = time.monotonic() + 5
            while samples[-1]["running"] + samples[-1]["queued"] < 8 and time.monotonic() < deadline:
                samples.append((await watcher.status())["tasks"])
            assert samples[-1]["running"] == 4 and samples[-1]["queued"] == 4, samples[-1]
            ninth = await one("One more")  # 4 running + 4 queued (queue_limit 4): the node is full
            assert ninth[-1]["type"] == "error" and ninth[-1]["code"] == "busy", ninth[-1]
            while not all(job.done() for job in jobs):
                samples.append((await watcher.status())["tasks"])
                await asyncio.sleep(0.05)
            return [job.result() for job in jobs], samples

    results, samples = asyncio.run(run())
    for events in results:
        tokens = [e for e in events if e["type"] == "token"]
        assert events[-1]["type"] == "done" and [t["seq"] for t in tokens] == list(range(len(tokens))), events[-1]
        assert events[-1]["text"] == "".join(t["text"] for t in tokens) and tokens
    assert max(s["running"] for s in samples) == 4, samples  # four at once, never more
    assert max(s["queued"] for s in samples) >= 1  # the rest waited their turn


def test_cancelling_one_of_four_streams_leaves_the_others_whole(node: Daemon) -> None:
    async def run() -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
        async with AsyncClient(node.endpoint, timeout=30) as client:
            streams = [client.submit(p, max_tokens=n, params={"temperature": 0.0}, task_id=f"s{i}")
                       for i, (p, n) in enumerate(zip(PROMPTS[:4], (2000, 32, 32, 32)))]

            async def drain(stream: Any, cancel_after: int | None) -> list[dict[str, Any]]:
                events = []
                async for event in stream:
                    events.append(event)
                    if cancel_after is not None and event["type"] == "token" and event["seq"] == cancel_after:
                        await client.cancel("s0")
                return events

            results = await asyncio.gather(*(drain(s, 5 if i == 0 else None) for i, s in enumerate(streams)))
            after = [e async for e in client.submit(PROMPTS[4], max_tokens=8, params={"temperature": 0.0})]
            return list(results), after

    results, after = asyncio.run(run())
    assert results[0][-1]["type"] == "done" and results[0][-1]["finish_reason"] == "cancelled"
    for events in results[1:]:
        tokens = [e for e in events if e["type"] == "token"]
        assert events[-1]["type"] == "done" and events[-1]["finish_reason"] in ("length", "stop")
        assert [t["seq"] for t in tokens] == list(range(len(tokens)))
    assert after[-1]["type"] == "done" and after[-1]["usage"]["completion_tokens"] > 0  # the freed slot serves

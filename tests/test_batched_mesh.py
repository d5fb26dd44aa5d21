"""Continuous batching through a daemon: a llama node with slots = 4 serving 8 concurrent clients (real model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Daemon, launch, private_env, run_cli

from zmqllm.client import AsyncClient

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")

pytestmark = [pytest.mark.llama, pytest.mark.timeout(600)]
"""Every wait below is on an event (a status, a stream's end) with its own generous bound, so a loaded machine
makes these tests slower, never wrong; the pytest timeout only stops a hang."""
PROMPTS = ["The capital of France is", "Once upon a time", "The best way to cook rice is", "Water boils at",
           "My favourite colour is", "The train left the station", "In the year 1900", "Cats and dogs"]
HOLDER_PROMPT = "The capital of France is"
"""Greedy, the bundled model writes 256 tokens and more on this prompt without an end of text: a holder keeps
its slot until the test cancels it."""
HOLDER_TOKENS = 400
READY_S = 300.0
"""Loading (and first assembling) the bundled model on a busy machine."""
WAIT_S = 120.0
"""The bound of each event wait; an idle machine needs well under a second."""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return private_env(tmp_path_factory.mktemp("batched"))


@pytest.fixture(scope="module")
def node(env: dict[str, str]) -> Iterator[Daemon]:
    daemon = launch(env, "a", "--model", "bundled:gemma3-270m", "--threads", "2", "--slots", "4",
                    "--ctx", "512", "--queue-limit", "4", engine="llama", wait=False)
    try:
        daemon.wait_ready(READY_S)
        yield daemon
    finally:
        daemon.stop()


async def _until(watcher: AsyncClient, samples: list[dict[str, Any]], done: Any, what: str) -> None:
    """Sample the node's task counts until `done(counts)`; at most WAIT_S."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                samples.append((await watcher.status())["tasks"])
                if done(samples[-1]):
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"no {what} within {WAIT_S:g} s: {samples[-1:]}") from None


def test_eight_requests_on_four_slots_all_complete_four_at_once_and_a_ninth_is_busy(node: Daemon, env: dict[str, str]) -> None:
    """Four holders fill the slots and stay (until cancelled), so the four short requests behind them are
    queued for as long as the test needs, however slow the machine; then the holders are cancelled and the
    queue drains through the freed slots."""
    models = json.loads(run_cli(env, "models", "--json", "--connect", node.endpoint, "--timeout", "30").stdout)
    assert models[0]["slots"] == 4 and models[0]["ctx"] == 512  # context per slot

    async def run() -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]], list[dict[str, Any]]]:
        async with AsyncClient(node.endpoint, timeout=WAIT_S) as client, \
                AsyncClient(node.endpoint, timeout=WAIT_S) as watcher:
            async def one(prompt: str, max_tokens: int, task_id: str) -> list[dict[str, Any]]:
                return [e async for e in client.submit(prompt, max_tokens=max_tokens, task_id=task_id,
                                                       params={"temperature": 0.0})]

            samples: list[dict[str, Any]] = []
            holders = [asyncio.create_task(one(HOLDER_PROMPT, HOLDER_TOKENS, f"hold{i}")) for i in range(4)]
            await _until(watcher, samples, lambda c: c["running"] == 4, "four holders running")
            short = [asyncio.create_task(one(prompt, 8, f"short{i}")) for i, prompt in enumerate(PROMPTS[:4])]
            await _until(watcher, samples, lambda c: c["queued"] == 4, "four requests queued")
            assert samples[-1]["running"] == 4 and not any(job.done() for job in holders + short), samples[-1]
            ninth = await one("One more", 8, "ninth")  # 4 running + 4 queued (queue_limit 4): the node is full
            assert ninth[-1]["type"] == "error" and ninth[-1]["code"] == "busy", ninth[-1]
            for i in range(4):
                await client.cancel(f"hold{i}")
            await _until(watcher, samples, lambda _: all(job.done() for job in holders + short),
                         "end of all eight")
            return [job.result() for job in holders], [job.result() for job in short], samples

    holders, short, samples = asyncio.run(run())
    for events in holders:
        assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "cancelled", events[-1]
    for events in holders + short:
        tokens = [e for e in events if e["type"] == "token"]
        assert events[-1]["type"] == "done" and [t["seq"] for t in tokens] == list(range(len(tokens))), events[-1]
        assert events[-1]["text"] == "".join(t["text"] for t in tokens)
    for events in short:
        assert events[-1]["finish_reason"] in ("length", "stop") and events[-1]["usage"]["completion_tokens"] > 0
    assert max(s["running"] for s in samples) == 4, samples  # four at once, never more
    assert max(s["queued"] for s in samples) == 4  # the rest waited their turn


def test_cancelling_one_of_four_streams_leaves_the_others_whole(node: Daemon) -> None:
    async def run() -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
        async with AsyncClient(node.endpoint, timeout=WAIT_S) as client:
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

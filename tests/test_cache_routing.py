"""Cache-aware routing on real llama daemons: each conversation's next turn lands on the node whose cache holds
its history, and reuses it (`cached_tokens`). Four conversations start at once on three nodes (spread by load),
then take turns in a new order each round: least-loaded routing would move them (every node idle, ties to the
origin), cache-aware routing keeps each where its history is."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import parser

from conftest import Daemon, launch, private_env, states, wait_until
from zmqllm.client import AsyncClient

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
pytestmark = [pytest.mark.llama, pytest.mark.timeout(300)]

SYSTEM = ("You are a patient tutor. You explain one idea at a time, in plain words, with one short example, "
          "and you never skip a step. ") * 6
QUESTIONS = {
    "rome": ["Who founded Rome?", "What came after the kings?", "Why did the republic end?"],
    "tides": ["What causes tides?", "Why are there two a day?", "What is a spring tide?"],
    "primes": ["What is a prime number?", "Is one a prime?", "Why do primes matter?"],
    "rivers": ["Where do rivers begin?", "Why do rivers bend?", "What is a delta?"],
}
LLAMA = ("--model", "bundled:gemma3-270m", "--threads", "1", "--batch", "32")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    env = private_env(tmp_path_factory.mktemp("cache-home"))
    daemons: list[Daemon] = []
    try:
        daemons.append(launch(env, "a", *LLAMA, "--metrics", "127.0.0.1:0", engine="llama"))
        for name in ("b", "c"):
            daemons.append(launch(env, name, *LLAMA, "--peer", daemons[0].endpoint, engine="llama"))
        wait_until(lambda: set(states(daemons[0]).values()) == {"alive"} and len(states(daemons[0])) == 3, 15,
                   what="three llama nodes")
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop()


def test_each_conversation_stays_on_the_node_holding_its_history(mesh: list[Daemon]) -> None:
    origin = mesh[0]
    history = {name: SYSTEM for name in QUESTIONS}
    placed: dict[str, list[str]] = {name: [] for name in QUESTIONS}
    cached: dict[str, list[int]] = {name: [] for name in QUESTIONS}

    async def turn(client: AsyncClient, name: str, question: str) -> None:
        prompt = f"{history[name]}\nQ: {question}\nA:"
        events = [e async for e in client.submit(prompt, max_tokens=24, params={"temperature": 0.0})]
        done = events[-1]
        assert done["type"] == "done", done
        placed[name].append(done["executed_by"])
        cached[name].append(done["usage"].get("cached_tokens", 0))
        history[name] = prompt + done["text"]

    async def conversations() -> None:
        async with AsyncClient(origin.endpoint, timeout=120) as client:
            names = list(QUESTIONS)
            await asyncio.gather(*(turn(client, name, QUESTIONS[name][0]) for name in names))
            for round_ in (1, 2):
                for name in names[round_:] + names[:round_]:  # sent the moment the last turn ended
                    await turn(client, name, QUESTIONS[name][round_])

    asyncio.run(conversations())
    assert len({nodes[0] for nodes in placed.values()}) == 3, placed  # the first turns spread by load
    for name in QUESTIONS:
        assert placed[name][1:] == placed[name][:1] * 2, placed  # every later turn where its history is
        assert all(count > 0 for count in cached[name][1:]), cached
    metrics = scrape(origin.ready_event["metrics"][0] + "/metrics")
    assert metrics[("zmqllm_cached_prompt_tokens_total", "gemma3-270m")] == sum(map(sum, cached.values()))
    assert metrics[("zmqllm_prompt_tokens_total", "gemma3-270m")] > metrics[("zmqllm_cached_prompt_tokens_total",
                                                                             "gemma3-270m")]


def scrape(url: str) -> dict[tuple[str, str], float]:
    """/metrics as prometheus_client parses it: {(sample name, model label): value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, sample.labels.get("model", "")): sample.value
            for family in parser.text_string_to_metric_families(text) for sample in family.samples}

"""The HTTP gateway under load: 200 concurrent SSE streams through one node of a real echo mesh, and the
`zmqllm bench http` command's echo part run as a real subprocess.

Every stream's text is known in advance (the echo engine cycles the prompt's words), so each one is checked
whole and in order; each prompt differs, so a token delivered to the wrong stream shows too. Every wait is
bounded: the whole load round by `asyncio.timeout`, each test by pytest-timeout."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import Daemon, run_cli, wait_until

aiohttp = pytest.importorskip("aiohttp", reason="the gateway's own dependency")

STREAMS = 200
TOKENS = 40
ECHO_RATE = "40"
"""Tokens/s per stream: each stream lasts ≈ 1 s, so all 200 are open at once without making the test slow."""
ROUND_TIMEOUT_S = 40.0
LOCAL_HTTP = ("--http", "127.0.0.1:0")
CAPACITY = ("--slots", str(STREAMS), "--queue-limit", str(STREAMS), "--echo-rate", ECHO_RATE)
"""Room for every stream on either node, so none is turned away as busy (429)."""


@dataclass
class Streamed:
    """One streamed answer as the client read it."""

    status: int
    executed_by: str
    events: list[str]
    """Every `data:` payload, in order ([DONE] included)."""


def expected_text(prompt: str, tokens: int) -> str:
    """The echo engine's answer: the prompt's words, each with its following space, cycled."""
    words = prompt.split()
    return "".join(words[i % len(words)] + " " for i in range(tokens))


def served_by(daemon: Daemon) -> set[str]:
    with daemon.client() as client:
        return {row["name"] for row in client.peers() if row["state"] == "alive"}


@pytest.fixture
def gateway(spawn) -> Iterator[str]:
    """A three-node echo mesh; `a` serves HTTP. Yields a's base URL once a sees both others alive."""
    a = spawn("a", *LOCAL_HTTP, *CAPACITY)
    spawn("b", "--peer", a.endpoint, *CAPACITY)
    spawn("c", "--peer", a.endpoint, *CAPACITY)
    wait_until(lambda: served_by(a) == {"a", "b", "c"}, 15, what="a to see b and c")
    assert a.ready_event is not None
    yield a.ready_event["http"][0]


async def stream_one(session: aiohttp.ClientSession, url: str, prompt: str) -> Streamed:
    body = {"model": "echo", "prompt": prompt, "max_tokens": TOKENS, "stream": True}
    async with session.post(url + "/v1/completions", json=body) as response:
        events = []
        async for line in response.content:  # one line at a time, however the bytes were split
            if line.startswith(b"data: "):
                events.append(line[6:].strip().decode())
        return Streamed(response.status, response.headers.get("x-zmqllm-executed-by", ""), events)


async def load(url: str, prompts: list[str]) -> list[Streamed]:
    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap: every request is in flight at once
    async with asyncio.timeout(ROUND_TIMEOUT_S), aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(stream_one(session, url, prompt) for prompt in prompts))


@pytest.mark.timeout(90)
def test_200_concurrent_streams_through_one_gateway_arrive_whole_and_in_order(gateway):
    prompts = [f"stream{i} alpha beta{i % 7}" for i in range(STREAMS)]
    started = time.monotonic()
    answers = asyncio.run(load(gateway, prompts))
    elapsed = time.monotonic() - started

    assert [a.status for a in answers] == [200] * STREAMS
    for prompt, answer in zip(prompts, answers):
        assert answer.events[-1] == "[DONE]", f"{prompt!r}: the stream did not end with [DONE]"
        chunks = [json.loads(event) for event in answer.events[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks) == expected_text(prompt, TOKENS), prompt
        assert len({c["id"] for c in chunks}) == 1, f"{prompt!r}: chunks of several answers"
        reasons = [c["choices"][0]["finish_reason"] for c in chunks]
        assert reasons[-1] == "length" and not any(reasons[:-1]), f"{prompt!r}: finish_reason {reasons}"
        assert answer.executed_by in ("a", "b", "c")
    assert len({a.executed_by for a in answers}) > 1, "every stream ran on one node: none crossed the mesh"
    # Side by side, not queued: one after another the round would take STREAMS × TOKENS / rate = 200 s.
    assert elapsed < ROUND_TIMEOUT_S / 2, f"the 200 streams took {elapsed:.1f} s: they did not run side by side"


@pytest.mark.timeout(120)
def test_bench_http_echo_part_reports_sane_figures(zmqllm_env):
    result = run_cli(zmqllm_env, "bench", "http", "--quick", "--echo-only", "--json", timeout=100)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == "http" and report["settings"]["streams"] > 0
    concurrent = report["figures"]["concurrent"]
    for side in ("gateway", "native"):
        figures = concurrent[side]["tok_s"]
        assert 0 < figures["min"] <= figures["median"] <= figures["max"]
        assert len(figures["runs"]) == report["settings"]["runs"]
    assert concurrent["ratio"] > 0 and report["ratio"] == concurrent["ratio"]
    assert isinstance(report["met"], bool)
    assert report["figures"]["single"]["skipped"] and report["figures"]["llama_server"]["skipped"]
    assert "bench: http:" in result.stderr  # progress goes to stderr, the document alone to stdout

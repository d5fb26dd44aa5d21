"""Heavy work on a big input must not stall a daemon's event loop, or its peers stop hearing its heartbeats.

Measured end to end: a second daemon watches the first, and a client polls the watcher's view of the first's
heartbeat age while the first works. A loop stalled for S seconds shows as an age of about one interval + S.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, states, wait_until

from zmqllm.client import AsyncClient, Client, MeshUnreachable
from zmqllm.workflow import split_text

HEARTBEAT_S = 0.5
"""Long enough that two busy cores' scheduling jitter stays well inside the half interval of slack."""
AGE_LIMIT_S = 1.5 * HEARTBEAT_S
POLL_S = 0.02
MIN_WATCH_S = 3 * HEARTBEAT_S
"""Watch a little past the work, so a stall at its very end shows too."""
MB = 1_000_000


def _lines(size: int, seed: int = 1) -> str:
    """`size` characters of one-line records (a log, a CSV): line ends are the only boundaries."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    lines, total = [], 0
    while total < size:
        line = f"{len(lines):06d} " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)


# -- the split itself: work in proportion to the input --------------------------------------------------------


def _counting(counter: Callable[[str], int]) -> tuple[Callable[[str], int], list[int]]:
    seen = [0]

    def count(text: str) -> int:
        seen[0] += len(text)
        return counter(text)

    return count, seen


@pytest.mark.parametrize("text, limit, counter", [
    (_lines(200_000), 5_000, lambda text: len(text.split())),            # line pieces packed into big chunks
    ("x" * 50_000, 1_000, lambda text: sum(c.isalpha() for c in text)),  # one word, hard cuts
], ids=["lines", "one-word"])
def test_the_split_counts_each_character_a_few_times_not_once_per_piece(
        text: str, limit: int, counter: Callable[[str], int]) -> None:
    """Fails before the fix: packing pieces one by one recounted the growing chunk for every piece (≈ 250 times
    the text here; 1 MB cut into 500-token chunks took 24 s with the bundled model's tokenizer, 1.5 s after),
    and hard cuts bisected over the whole rest of the text for every chunk."""
    count, seen = _counting(counter)
    chunks = split_text(text, chunk_tokens=limit, count_tokens=count)
    assert len(chunks) > 5 and all(counter(chunk) <= limit for chunk in chunks)
    assert seen[0] <= 4 * len(text), f"counted {seen[0] / len(text):.1f} times the text's length"


def _packed_one_by_one(text: str, limit: int, size: Callable[[str], int], level: int = 0) -> list[str]:
    """The plain greedy packing the split promises to equal for a counter that grows with the text."""
    boundaries = [r"\n[ \t]*\n\s*", r"\n\s*", r"(?<=[.!?])\s+", r"\s+"]
    text = text.strip()
    if not text or size(text) <= limit:
        return [text] if text else []
    if level == len(boundaries):
        chunks = []
        while text:
            end = max([n for n in range(1, len(text) + 1) if size(text[:n]) <= limit] or [1])
            chunks.append(text[:end])
            text = text[end:]
        return chunks
    pieces: list[str] = []
    start = 0
    for match in re.finditer(boundaries[level], text):
        pieces.append(text[start:match.end()])
        start = match.end()
    pieces.append(text[start:])
    chunks, current = [], ""
    for piece in filter(None, pieces):
        if size((current + piece).strip()) <= limit:
            current += piece
            continue
        if current.strip():
            chunks.append(current.strip())
        current = piece if size(piece.strip()) <= limit else ""
        if not current:
            chunks.extend(_packed_one_by_one(piece, limit, size, level + 1))
    if current.strip():
        chunks.append(current.strip())
    return chunks


def test_the_split_equals_packing_pieces_one_by_one() -> None:
    rng = random.Random(7)
    alphabet = ["a", "bb", "ccc", "dddddddd", "e" * 30, ".", "!", " ", " ", "\n", "\n\n", "\t", "  \n \n"]

    def letters(text: str) -> int:
        return sum(c.isalpha() for c in text)

    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        chars, words, tokens = rng.randint(1, 80), rng.randint(1, 20), rng.randint(1, 60)
        assert split_text(text, chunk_chars=chars) == _packed_one_by_one(text, chars, len), (text, chars)
        assert split_text(text, chunk_tokens=words) == _packed_one_by_one(
            text, words, lambda t: len(t.split())), (text, words)
        assert split_text(text, chunk_tokens=tokens, count_tokens=letters) == _packed_one_by_one(
            text, tokens, letters), (text, tokens)


# -- on real daemons ------------------------------------------------------------------------------------------


@contextmanager
def watching(watcher: Daemon, name: str) -> Iterator[list[float]]:
    """Poll `watcher`'s view of peer `name` while the block runs, and for at least `MIN_WATCH_S` in all; yields
    the heartbeat ages seen (seconds). A peer not seen alive, or a poll left unanswered, counts as infinite."""
    ages: list[float] = []
    stop, pace = threading.Event(), threading.Event()
    watch_until = time.monotonic() + MIN_WATCH_S

    def poll() -> None:
        with Client(watcher.endpoint, timeout=5.0) as client:
            while not (pace.wait(POLL_S) or stop.is_set() and time.monotonic() >= watch_until):
                try:
                    row = next(row for row in client.peers() if row["name"] == name)
                except MeshUnreachable:
                    ages.append(float("inf"))
                    continue
                ages.append(float(row["heartbeat_age_s"]) if row["state"] == "alive" else float("inf"))

    thread = threading.Thread(target=poll, name=f"watch {name}", daemon=True)
    thread.start()
    try:
        yield ages
    finally:
        stop.set()
        thread.join(MIN_WATCH_S + 10.0)


@pytest.fixture
def pair(spawn: Any) -> Callable[..., tuple[Daemon, Daemon]]:
    """`pair(*args_for_a, engine=...)`: daemon a (doing the work) and an echo daemon b watching it."""

    def start(*args: str, engine: str = "echo") -> tuple[Daemon, Daemon]:
        a = spawn("a", *args, engine=engine, heartbeat=HEARTBEAT_S)
        b = spawn("b", "--peer", a.endpoint, heartbeat=HEARTBEAT_S)
        wait_until(lambda: states(b).get("a") == "alive" and states(a).get("b") == "alive", 10, what="pair")
        return a, b

    return start


SPLIT_SPEC = """
name = "digest"
output = "parts"
[defaults]
max_tokens = 1
[[steps]]
name = "parts"
split = "input"
chunk_tokens = 20000
prompt = "{chunk}"
merge = "concat"
"""


def test_a_1mb_split_input_does_not_delay_heartbeats(pair: Callable[..., tuple[Daemon, Daemon]]) -> None:
    """Fails before the fix: the orchestrator cut the input on its event loop, recounting the growing chunk for
    every line, so the node went silent for seconds (its peer saw heartbeat ages of many intervals)."""
    a, b = pair("--echo-rate", "0")
    text = _lines(MB)

    async def run() -> list[dict[str, Any]]:
        async with AsyncClient(a.endpoint, timeout=60) as client:
            return [event async for event in client.run(SPLIT_SPEC, text)]

    with watching(b, "a") as ages:
        events = asyncio.run(asyncio.wait_for(run(), 120))
    final = events[-1]
    assert final["type"] == "done" and final["state"] == "done", final
    parts = [t for t in final["tasks"] if t["step"] == "parts"]
    assert len(parts) == len(split_text(text, chunk_tokens=20000)) > 1
    assert ages and max(ages) < AGE_LIMIT_S, f"worst heartbeat age {max(ages):.2f}s over {len(ages)} polls"


TEMPLATE = ("{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
            "{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n")
CHAT_MESSAGES = 256
"""The most a chat may hold (`core.chat.MAX_MESSAGES`)."""


@pytest.mark.llama
def test_a_long_chat_does_not_delay_heartbeats(pair: Callable[..., tuple[Daemon, Daemon]], tmp_path: Path) -> None:
    """A chat of the most messages allowed, 1 MB in all, rendered through a Jinja chat template on the bundled
    model: longer than the context, so it is refused, after rendering and tokenising off the loop.

    A guard rather than a proof: it passes before the fix too. Rendering moved to a worker thread, but Jinja
    renders 1 MB in 2 ms with this template (65 ms even looping over every character), and tokenising already
    ran on the engine's worker; the worst age seen was 0.50 s before and after."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    a, b = pair("--model", "bundled:gemma3-270m", "--threads", "1", "--chat-format", str(template),
                engine="llama")
    size = MB // CHAT_MESSAGES
    roles = ["system"] + ["user", "assistant"] * (CHAT_MESSAGES // 2 - 1) + ["user"]
    messages = [{"role": role, "content": _lines(size, seed=i)} for i, role in enumerate(roles)]

    async def chat() -> list[dict[str, Any]]:
        async with AsyncClient(a.endpoint, timeout=60) as client:
            return [event async for event in client.chat(messages, peer="a", max_tokens=4)]

    with watching(b, "a") as ages:
        events = asyncio.run(asyncio.wait_for(chat(), 120))
    assert events[-1]["type"] == "error" and "context window" in events[-1]["message"], events[-1]
    assert ages and max(ages) < AGE_LIMIT_S, f"worst heartbeat age {max(ages):.2f}s over {len(ages)} polls"

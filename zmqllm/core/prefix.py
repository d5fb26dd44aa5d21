"""What a node's prompt caches hold, summarised small enough to ride on every heartbeat, and how much of a new
prompt a node could reuse. Pure.

A prompt is cut into blocks of `BLOCK_CHARS` characters and each block gets a 32-bit hash chained on the hash
before it (as vLLM and llm-d hash KV blocks), so equal hashes mean equal text from the start up to that block.
Text, not tokens: the origin that routes a request need not have the model's tokenizer (it may serve another
model, or none), and a prefix of the text is a prefix of the tokens up to the block's last few characters. A
chat's text is its messages, each as role and content, so the next turn of a conversation starts with the text
of the turn before it.

An executor records the chain of each prompt it served with its answer (what the cache then holds), newest last, keeping per model as many prompts as its
engine holds in cache (`Engine.prefix_capacity`), and advertises the union of their hashes. The origin counts
how many of a request's leading blocks a node holds: the share of the prompt that node would not compute again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

BLOCK_CHARS = 128
"""Characters per block: about 32 tokens of English, fine enough that one turn of a chat moves a prompt past a
block or more, so a conversation's own history outweighs a system prompt every node holds."""
MAX_BLOCKS = 512
"""Blocks of one prompt that are hashed (64 Ki characters): reuse beyond that is counted as the full prompt's."""
MAX_ADVERTISED = 1024
"""Hashes one node advertises, all models together (4 KiB of heartbeat); the newest prompts' first."""
_HASH_BYTES = 4


def prompt_text(prompt: str, messages: Sequence[Mapping[str, Any]] = (), answer: str | None = None) -> str:
    """The text a request's cache reuse is judged on: a chat's messages (each role and content, separated by
    characters no text uses), else its prompt. With `answer`, the text the cache holds after answering: what the
    next turn starts with (the prompt and the answer; for a chat, the answer as the assistant's message)."""
    if not messages:
        return prompt + (answer or "")
    if answer is not None:
        messages = [*messages, {"role": "assistant", "content": answer}]
    return "".join(f"{m.get('role', '')}\x1f{m.get('content', '')}\x1e" for m in messages)


def block_hashes(text: str) -> list[int]:
    """The chained hashes of `text`'s whole blocks (a trailing part block has none: it is the part most likely
    to differ next time)."""
    hashes: list[int] = []
    previous = b""
    for start in range(0, min(len(text), MAX_BLOCKS * BLOCK_CHARS) - BLOCK_CHARS + 1, BLOCK_CHARS):
        digest = hashlib.blake2b(previous + text[start:start + BLOCK_CHARS].encode("utf-8", "surrogatepass"),
                                 digest_size=_HASH_BYTES).digest()
        hashes.append(int.from_bytes(digest, "big"))
        previous = digest
    return hashes


def reuse(prefix: Sequence[int], held: frozenset[int] | None) -> float:
    """The share (0 to 1) of a prompt, given by its `prefix` hashes, that a node holding `held` would reuse:
    its leading blocks found there. 0 for a prompt shorter than a block."""
    if not prefix or not held:
        return 0.0
    matched = 0
    for value in prefix:
        if value not in held:
            break
        matched += 1
    return matched / len(prefix)


class CacheRecord:
    """One node's recent prompts per model, newest last: what it advertises its caches hold."""

    def __init__(self) -> None:
        self._chains: dict[str, list[list[int]]] = {}
        self._summary: dict[str, frozenset[int]] | None = None
        """`advertised()`'s last answer, until a record changes: every heartbeat and every placement asks."""

    def record(self, model: str, prefix: list[int], capacity: int) -> None:
        """`model` just served a prompt whose chain is `prefix`; its engine holds `capacity` prompts."""
        if capacity <= 0 or not prefix:
            if self._chains.pop(model, None) is not None:
                self._summary = None
            return
        chains = [c for c in self._chains.get(model, []) if c != prefix]
        chains.append(prefix)
        self._chains[model] = chains[-capacity:]
        self._summary = None

    def forget(self, model: str) -> None:
        """The model's cache is gone (unloaded)."""
        if self._chains.pop(model, None) is not None:
            self._summary = None

    def advertised(self, capacity: Callable[[str], int]) -> dict[str, frozenset[int]]:
        """The hashes to put on the heartbeat, per model, newest prompts first, `MAX_ADVERTISED` in all. A model
        whose `capacity` is now 0 (unloaded, or its cache switched off) is forgotten first; one whose capacity
        shrank keeps only its newest prompts."""
        for model in list(self._chains):
            keep = capacity(model)
            if keep <= 0:
                del self._chains[model]
                self._summary = None
            elif len(self._chains[model]) > keep:
                self._chains[model] = self._chains[model][-keep:]
                self._summary = None
        if self._summary is not None:
            return self._summary
        out: dict[str, frozenset[int]] = {}
        budget = MAX_ADVERTISED
        for model, chains in self._chains.items():
            seen: dict[int, None] = {}
            for chain in reversed(chains):
                for value in chain:
                    if budget - len(seen) <= 0:
                        break
                    seen.setdefault(value, None)
            budget -= len(seen)
            if seen:
                out[model] = frozenset(seen)
        self._summary = out
        return out


def parse_advertised(value: Any) -> dict[str, frozenset[int]]:
    """A heartbeat's `cache` field as sets, anything malformed dropped and `MAX_ADVERTISED` kept at most (a
    peer's summary is a hint, never a reason to refuse its heartbeat)."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, frozenset[int]] = {}
    budget = MAX_ADVERTISED
    for model, hashes in value.items():
        if not isinstance(model, str) or not isinstance(hashes, list) or budget <= 0:
            continue
        kept = frozenset(h for h in hashes[:budget] if isinstance(h, int) and not isinstance(h, bool)
                         and 0 <= h < 1 << (8 * _HASH_BYTES))
        budget -= len(kept)
        if kept:
            out[model] = kept
    return out


ORIGIN_MEMORY = 4
"""Prompts per node and model an origin remembers placing there itself."""
MAX_REMEMBERED_NODES = 256


class Placements:
    """What an origin knows at once of other nodes' caches: the prompts (with answers) it saw answered there.
    Heartbeats bring the same a beat later; this makes a client's next turn, sent the moment the last one
    ended, find its history without waiting for one. A hint, as the heartbeat's is: a node may have evicted it."""

    def __init__(self) -> None:
        self._nodes: dict[str, CacheRecord] = {}

    def remember(self, node: str, model: str, text: str) -> None:
        record = self._nodes.pop(node, None) or CacheRecord()
        self._nodes[node] = record  # most recently used last
        record.record(model, block_hashes(text), ORIGIN_MEMORY)
        while len(self._nodes) > MAX_REMEMBERED_NODES:
            del self._nodes[next(iter(self._nodes))]

    def forget(self, node: str) -> None:
        """The node died or left: its caches went with it."""
        self._nodes.pop(node, None)

    def held(self, node: str, advertised: Mapping[str, frozenset[int]]) -> Mapping[str, frozenset[int]]:
        """The node's advertised hashes and those of what this origin placed there, per model."""
        record = self._nodes.get(node)
        if record is None:
            return advertised
        mine = record.advertised(lambda model: ORIGIN_MEMORY)
        return {model: advertised.get(model, frozenset()) | mine.get(model, frozenset())
                for model in advertised.keys() | mine.keys()}

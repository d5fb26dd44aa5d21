"""Sampling for the llama engine, without llama.cpp: the parameters a request
asks for, and how the sampled tokens become streamed text.

`parse_sampling` checks `request.params` and fills in the defaults of
llama-cpp-python's `create_completion`, so that a request leaving them out
samples exactly as a direct `create_completion` call would.

`TokenText` turns sampled tokens (id and detokenized bytes) into `TokenChunk`s.
Each chunk carries the ids of the tokens whose text it completes, so the text
delivered so far always equals the decoded ids delivered so far. Tokens are held
back (text and id together) while their bytes end in an incomplete UTF-8
character or their text could be the start of a stop sequence. The one exception
is the chunk that ends a stopped generation: it carries the ids of the tokens
that hold the stop text, but not that text. With several stop sequences the text
is cut at the earliest one in the text (`create_completion` cuts at the first
one in list order that occurs).
"""

from __future__ import annotations

import codecs
import math
import random
from dataclasses import dataclass
from typing import Any

from zmqllm.core.generation import SAMPLING_RANGES
from zmqllm.engines.base import SAMPLING_KEYS, EngineError, TokenChunk

# create_completion's defaults in llama-cpp-python 0.3.36.
DEFAULT_SAMPLING: dict[str, Any] = {
    "temperature": 0.8,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
}
_SEED_MOD = 0xFFFFFFFF  # seeds map into 0 .. 2**32-2 (2**32-1 means "random" to llama.cpp)
_seed_source = random.SystemRandom()


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None

    def seed_to_use(self) -> int:
        """The request's seed, or a fresh random one where it gave none."""
        return self.seed if self.seed is not None else _seed_source.randrange(_SEED_MOD)


def parse_sampling(params: dict[str, Any]) -> Sampling:
    """Validate `request.params` (keys of `base.SAMPLING_KEYS`) and fill in
    create_completion's defaults. Raises `EngineError("bad_request", ...)`."""
    unknown = sorted(set(params) - set(SAMPLING_KEYS))
    if unknown:
        raise EngineError(
            "bad_request",
            f"unknown sampling parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(SAMPLING_KEYS)}",
        )
    values: dict[str, Any] = dict(DEFAULT_SAMPLING)
    for key, value in params.items():
        want = SAMPLING_KEYS[key]
        if value is None:
            continue
        ok = isinstance(value, int) if want is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise EngineError(
                "bad_request", f"{key} must be {want.__name__}, got {value!r}"
            )
        if want is float:
            value = float(value)
            if not math.isfinite(value):
                raise EngineError("bad_request", f"{key} must be finite, got {value!r}")
        values[key] = value
    for key, allowed in SAMPLING_RANGES.items():
        if not allowed.holds(values[key]):
            raise EngineError("bad_request", f"{key} must be {allowed}, got {values[key]!r}")
    seed = values.get("seed")
    return Sampling(
        temperature=values["temperature"],
        top_p=values["top_p"],
        top_k=values["top_k"],
        min_p=values["min_p"],
        repeat_penalty=values["repeat_penalty"],
        seed=None if seed is None else seed % _SEED_MOD,
    )


class TokenText:
    """The text of one generation, built token by token (see the module docstring).

    `strip_space`: drop the leading space of the first piece with text, as
    detokenize() does when the text starts with BOS. It is also set when the
    first token pushed is `bos_id`.
    """

    def __init__(self, stops: tuple[str, ...], *, bos_id: int, strip_space: bool) -> None:
        self._stops = stops
        self._bos_id = bos_id
        self._strip_space = strip_space
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._ids: list[int] = []
        self._text = ""
        self._pushed = 0

    def push(self, token: int, piece: bytes) -> None:
        """Add one sampled token (EOS excluded) and its detokenized bytes."""
        self._pushed += 1
        if self._pushed == 1 and token == self._bos_id:
            self._strip_space = True
        if self._strip_space and piece:
            if piece[:1] == b" ":
                piece = piece[1:]
            self._strip_space = False
        self._ids.append(token)
        self._text += self._decoder.decode(piece)

    def take_stopped(self) -> TokenChunk | None:
        """Where the held text now holds a stop sequence: the last chunk, cut
        before the earliest stop (the generation ends); otherwise None."""
        if not self._stops:
            return None
        cut = _earliest_stop(self._text, self._stops)
        if cut is None:
            return None
        return self._take(self._text[:cut])

    def take_ready(self) -> TokenChunk | None:
        """The held text and ids, unless they end in an incomplete UTF-8
        character or could start a stop sequence (then None, still held)."""
        if self._text and not self._decoder.getstate()[0] and not (
            self._stops and _holds_stop_prefix(self._text, self._stops)
        ):
            return self._take(self._text)
        return None

    def take_rest(self) -> TokenChunk | None:
        """Whatever is still held, at the end of the generation; a dangling
        partial character is dropped. None where nothing is held."""
        self._text += self._decoder.decode(b"", final=True)
        if self._text or self._ids:
            return self._take(self._text)
        return None

    def _take(self, text: str) -> TokenChunk:
        chunk = TokenChunk(text, tuple(self._ids))
        self._ids, self._text = [], ""
        return chunk


def _earliest_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _holds_stop_prefix(text: str, stops: tuple[str, ...]) -> bool:
    """Whether some suffix of `text` is a proper prefix of a stop sequence."""
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                return True
    return False


__all__ = ["DEFAULT_SAMPLING", "Sampling", "TokenText", "parse_sampling"]

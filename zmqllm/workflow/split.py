"""Cutting a long text into chunks a small model can read, one branch per chunk.

Chunks are cut at the largest natural boundary that keeps them within the
limit: blank lines (paragraphs), then line ends, then sentence ends, then
spaces; only a single word longer than the limit is cut mid-word. Each chunk is
a stripped, contiguous slice of the text and none is empty, so a map step never
spends a task on nothing.

Each chunk is the longest run of pieces that fits, found by asking the counter
about a handful of candidate chunks near a guess (from the characters per token
measured so far), never about the whole text or a growing prefix of it: the
counter sees about a few times the text's length in all, so a 1 MB input costs
a few tokenizer passes, not one per piece (a real tokenizer reads ≈ 1 MB/s).
For a counter that grows with the text (more text never counts fewer tokens)
the chunks are exactly those of packing pieces one by one.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence

__all__ = ["count_words", "split_text"]

_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),     # paragraphs
    re.compile(r"\n\s*"),             # lines
    re.compile(r"(?<=[.!?])\s+"),     # sentences
    re.compile(r"\s+"),               # words
)
_INTERPOLATIONS = 3
"""Guesses from the measured characters per token before searching outward step by doubling step."""


def count_words(text: str) -> int:
    """Whitespace-separated words: the default token count, an approximation.

    Real tokenizers count more tokens than words (roughly 1.3 per English word
    for Gemma), so leave headroom in `chunk_tokens` when using it."""
    return len(text.split())


def split_text(text: str, *, chunk_chars: int | None = None, chunk_tokens: int | None = None,
               count_tokens: Callable[[str], int] | None = None) -> list[str]:
    """`text` in chunks of at most `chunk_chars` characters or `chunk_tokens` tokens.

    Exactly one limit must be given (>= 1); tokens are counted with
    `count_tokens` (default `count_words`). Returns [] for a blank text.
    Raises ValueError for a bad limit; whatever `count_tokens` raises."""
    if chunk_chars is not None and chunk_tokens is None:
        limit, size = chunk_chars, len
    elif chunk_tokens is not None and chunk_chars is None:
        limit, size = chunk_tokens, count_tokens or count_words
    else:
        raise ValueError("give exactly one of chunk_chars and chunk_tokens")
    if limit < 1:
        raise ValueError(f"the chunk limit must be >= 1, got {limit}")
    return _Packer(limit, size).split(text, 0)


class _Packer:
    """Packs pieces into chunks for one `split_text` call, learning the text's characters per unit as it goes."""

    def __init__(self, limit: int, size: Callable[[str], int]) -> None:
        self.limit = limit
        self.size = size
        self.chars_per_unit = 1.0

    def fits(self, text: str) -> bool:
        units = self.size(text)
        if units > 0:
            self.chars_per_unit = len(text) / units
        return units <= self.limit

    def split(self, text: str, level: int) -> list[str]:
        """Chunks of `text` cut at boundaries of `level` or finer."""
        text = text.strip()
        if not text:
            return []
        ends = _piece_ends(text, level)
        if len(ends) == 1 and level < len(_BOUNDARIES):
            return self.split(text, level + 1)  # no boundary of this kind: nothing to pack here
        chunks: list[str] = []
        first = 0
        while first < len(ends):
            start = ends[first - 1] if first else 0
            count = self._longest(text, ends, first, start)
            if count == 0 and level < len(_BOUNDARIES):  # one piece alone is over the limit
                chunks.extend(self.split(text[start:ends[first]], level + 1))
                first += 1
                continue
            count = max(count, 1)  # a single character over the limit still makes a chunk
            chunk = text[start:ends[first + count - 1]].strip()
            if chunk:
                chunks.append(chunk)
            first += count
        return chunks

    def _longest(self, text: str, ends: Sequence[int], first: int, start: int) -> int:
        """How many pieces from `first` on fit together (0 when not even one): guesses from the measured
        characters per unit, then steps out from the last guess by doubling steps, then bisection."""
        def fits(count: int) -> bool:
            return self.fits(text[start:ends[first + count - 1]].strip())

        lo, hi = 0, len(ends) - first + 1  # `lo` pieces fit; `hi` pieces do not (or run past the end)
        fitted = True
        for _ in range(_INTERPOLATIONS):
            target = start + self.chars_per_unit * self.limit
            probe = min(max(bisect.bisect_right(ends, target, first) - first, lo + 1), hi - 1)
            if probe in (lo, hi) or hi - lo <= 1:
                break
            fitted = fits(probe)
            lo, hi = (probe, hi) if fitted else (lo, probe)
        step = 1
        while hi - lo > 1:  # step out from the last probe until the answer is bracketed
            probe = min(lo + step, hi - 1) if fitted else max(hi - step, lo + 1)
            if fits(probe):
                lo = probe
                if not fitted:
                    break
            else:
                hi = probe
                if fitted:
                    break
            step *= 2
        while hi - lo > 1:
            middle = (lo + hi) // 2
            lo, hi = (middle, hi) if fits(middle) else (lo, middle)
        return lo


def _piece_ends(text: str, level: int) -> Sequence[int]:
    """Where each piece of `text` ends: after each boundary match of `level` (kept at the end of its piece),
    and the text's end; past the last level, after every character."""
    if level == len(_BOUNDARIES):
        return range(1, len(text) + 1)
    ends = [match.end() for match in _BOUNDARIES[level].finditer(text) if 0 < match.end() < len(text)]
    ends.append(len(text))
    return ends

"""Cutting a long text into chunks a small model can read, one branch per chunk.

Chunks are cut at the largest natural boundary that keeps them within the
limit: blank lines (paragraphs), then line ends, then sentence ends, then
spaces; only a single word longer than the limit is cut mid-word. Each chunk is
a stripped, contiguous slice of the text and none is empty, so a map step never
spends a task on nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["count_words", "split_text"]

_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),     # paragraphs
    re.compile(r"\n\s*"),             # lines
    re.compile(r"(?<=[.!?])\s+"),     # sentences
    re.compile(r"\s+"),               # words
)


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
    Raises ValueError for a bad limit."""
    if (chunk_chars is None) == (chunk_tokens is None):
        raise ValueError("give exactly one of chunk_chars and chunk_tokens")
    limit = chunk_chars if chunk_chars is not None else chunk_tokens
    assert limit is not None
    if limit < 1:
        raise ValueError(f"the chunk limit must be >= 1, got {limit}")
    size = len if chunk_chars is not None else (count_tokens or count_words)
    return _split(text, limit, size, 0)


def _split(text: str, limit: int, size: Callable[[str], int], level: int) -> list[str]:
    text = text.strip()
    if not text:
        return []
    if size(text) <= limit:
        return [text]
    if level == len(_BOUNDARIES):
        return _cut(text, limit, size)
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, _BOUNDARIES[level]):
        if size((current + piece).strip()) <= limit:
            current += piece
            continue
        if current.strip():
            chunks.append(current.strip())
        if size(piece.strip()) <= limit:
            current = piece
        else:
            chunks.extend(_split(piece, limit, size, level + 1))
            current = ""
    if current.strip():
        chunks.append(current.strip())
    return chunks


def _pieces(text: str, boundary: re.Pattern[str]) -> list[str]:
    """`text` cut after each boundary match, the match kept at the end of its piece."""
    pieces, start = [], 0
    for match in boundary.finditer(text):
        pieces.append(text[start:match.end()])
        start = match.end()
    pieces.append(text[start:])
    return [piece for piece in pieces if piece]


def _cut(text: str, limit: int, size: Callable[[str], int]) -> list[str]:
    """Hard cuts: the longest prefix within the limit each time (at least one character)."""
    chunks = []
    while text:
        low, high = 1, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if size(text[:middle]) <= limit:
                low = middle
            else:
                high = middle - 1
        chunks.append(text[:low])
        text = text[low:]
    return chunks

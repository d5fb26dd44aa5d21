"""How the outputs of a fan-out or split step become the step's one output.

Pure functions of the branch outputs in branch order, so a merge gives the same
result on every run and on a resumed run: `concat` joins, `vote` takes the
majority answer, and `numbered` lays the outputs out for an `llm` merge prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MERGES", "DEFAULT_SEPARATOR", "concat", "vote", "numbered", "answer_of", "normalise"]

MERGES = ("concat", "vote", "llm")
DEFAULT_SEPARATOR = "\n\n"
_TRAILING = ".!?,;: "  # punctuation (and the spaces around it) that does not change an answer


def concat(outputs: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> str:
    """Every output, stripped, in branch order, joined by `separator`."""
    return separator.join(output.strip() for output in outputs)


def answer_of(output: str) -> str:
    """An output's answer: its first non-empty line, stripped ("" if it has none).

    Only the first line counts because a base model keeps writing after the answer."""
    return next((line.strip() for line in output.splitlines() if line.strip()), "")


def normalise(answer: str) -> str:
    """The form answers are compared in: whitespace collapsed, casefolded, trailing punctuation gone."""
    return " ".join(answer.split()).casefold().rstrip(_TRAILING)


def vote(outputs: Sequence[str]) -> str:
    """The majority answer, as the earliest branch that gave it wrote it.

    Answers are compared normalised; a tie goes to the answer that first appears
    earliest in branch order, so the result never depends on timing. Outputs
    with no answer do not vote; if none has one the result is ""."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for output in outputs:
        answer = answer_of(output)
        key = normalise(answer)
        if not key:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, answer)
    if not counts:
        return ""
    winner = max(counts, key=counts.__getitem__)  # max keeps the first of equal counts: dicts keep insertion order
    return first[winner]


def numbered(outputs: Sequence[str]) -> str:
    """Every output in full, stripped, as "[1] ...", "[2] ..." separated by blank lines.

    This is the `{branches}` of an `llm` merge prompt."""
    return "\n\n".join(f"[{index}] {output.strip()}" for index, output in enumerate(outputs, 1))

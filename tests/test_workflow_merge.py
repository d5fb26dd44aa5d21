"""Merges of branch outputs and splitting of long inputs: pure text functions."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqllm.workflow import concat, count_words, numbered, split_text, vote
from zmqllm.workflow.merge import normalise

# -- concat -----------------------------------------------------------------------------


def test_concat_joins_stripped_outputs_in_branch_order() -> None:
    assert concat([" one\n", "two ", "\nthree"], " | ") == "one | two | three"
    assert concat(["a", "b"]) == "a\n\nb"


# -- vote -------------------------------------------------------------------------------


def test_vote_takes_the_majority_over_normalised_answers() -> None:
    assert vote(["Rome", " paris.", "PARIS", "Rome!", "Paris  "]) == "paris."


def test_vote_counts_only_the_first_non_empty_line() -> None:
    outputs = ["\n  Paris\nThe capital of France is Rome.", "Rome\nParis", "Rome is the capital\nRome"]
    assert vote(outputs) == "Paris"  # one vote each: the earliest answer wins


def test_vote_breaks_ties_by_earliest_first_occurrence() -> None:
    assert vote(["b", "a", "a", "b", "c"]) == "b"
    assert vote(["a", "b", "b", "a", "c"]) == "a"


def test_vote_returns_the_first_branch_spelling_of_the_winner() -> None:
    assert vote(["Eight legs", "eight   LEGS.", "Eight legs!", "six"]) == "Eight legs"


def test_vote_collapses_whitespace_and_trailing_punctuation() -> None:
    assert normalise("  The   Answer is 42 ?! ") == "the answer is 42"
    assert vote(["x", "The answer is 42.", "the answer  is 42;"]) == "The answer is 42."


def test_vote_ignores_outputs_without_an_answer() -> None:
    assert vote(["", "  \n\n", "...", "yes"]) == "yes"
    assert vote(["", "\n", "?!"]) == ""


def test_vote_is_deterministic_under_every_order() -> None:
    outputs = ["Rome", "Paris", "rome.", "Paris", "Berlin"]
    results = {vote(list(order)).casefold().rstrip(".") for order in itertools.permutations(outputs)}
    assert len(results) == 2  # a 2-2 tie: which of rome/paris appears first decides, nothing else
    assert vote(["Paris", "Rome", "Berlin", "rome.", "Paris"]) == "Paris"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "A.", "b", "B!", "c", " c ", ""]), min_size=1, max_size=9))
def test_vote_winner_has_the_highest_count(outputs: list[str]) -> None:
    winner = normalise(vote(outputs))
    counts: dict[str, int] = {}
    for output in outputs:
        if normalise(output):
            counts[normalise(output)] = counts.get(normalise(output), 0) + 1
    assert winner == (max(counts, key=counts.__getitem__) if counts else "")
    assert vote(outputs) == vote(list(outputs))


# -- numbered (the llm merge's {branches}) ----------------------------------------------


def test_numbered_shows_every_output_in_full() -> None:
    outputs = ["First answer.\nWith a second line.", "  Second\n\nwith a paragraph  ", "third"]
    text = numbered(outputs)
    assert text == ("[1] First answer.\nWith a second line.\n\n[2] Second\n\nwith a paragraph\n\n[3] third")
    assert all(output.strip() in text for output in outputs)


# -- split ------------------------------------------------------------------------------

PARAGRAPHS = "First paragraph, one line.\n\nSecond paragraph\nhas two lines.\n\n\nThird one."


def test_split_keeps_a_short_text_whole_and_drops_a_blank_one() -> None:
    assert split_text("  short text \n", chunk_chars=100) == ["short text"]
    assert split_text(" \n\n ", chunk_chars=10) == []


def test_split_prefers_paragraph_boundaries() -> None:
    assert split_text(PARAGRAPHS, chunk_chars=35) == [
        "First paragraph, one line.", "Second paragraph\nhas two lines.", "Third one."]
    assert split_text(PARAGRAPHS, chunk_chars=45) == [
        "First paragraph, one line.", "Second paragraph\nhas two lines.\n\n\nThird one."]
    assert split_text(PARAGRAPHS, chunk_chars=60) == [
        "First paragraph, one line.\n\nSecond paragraph\nhas two lines.", "Third one."]


def test_split_falls_back_to_lines_then_sentences_then_spaces() -> None:
    assert split_text("aaaa bbbb\ncccc dddd", chunk_chars=12) == ["aaaa bbbb", "cccc dddd"]
    assert split_text("One two. Three four! Five six?", chunk_chars=12) == ["One two.", "Three four!", "Five six?"]
    assert split_text("alpha beta gamma delta", chunk_chars=11) == ["alpha beta", "gamma delta"]


def test_split_cuts_a_single_long_word_hard() -> None:
    assert split_text("abcdefghij xy", chunk_chars=4) == ["abcd", "efgh", "ij", "xy"]


def test_split_by_tokens_counts_words_by_default() -> None:
    text = "one two three four five six seven"
    assert split_text(text, chunk_tokens=3) == ["one two three", "four five six", "seven"]
    assert count_words(" a  b\nc ") == 3


def test_split_by_tokens_uses_the_given_counter() -> None:
    def letters(text: str) -> int:
        return len(re.sub(r"\s", "", text))

    assert split_text("ab cd ef", chunk_tokens=4, count_tokens=letters) == ["ab cd", "ef"]
    assert split_text("abcdefg", chunk_tokens=3, count_tokens=letters) == ["abc", "def", "g"]


def test_split_needs_exactly_one_positive_limit() -> None:
    with pytest.raises(ValueError):
        split_text("x", chunk_chars=5, chunk_tokens=5)
    with pytest.raises(ValueError):
        split_text("x")
    with pytest.raises(ValueError):
        split_text("x", chunk_chars=0)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab .!\n\t"), max_size=300), st.integers(1, 40))
def test_split_chunks_are_non_empty_within_limit_and_lose_nothing(text: str, limit: int) -> None:
    chunks = split_text(text, chunk_chars=limit)
    assert all(chunk and chunk == chunk.strip() and len(chunk) <= limit for chunk in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())
    assert chunks == split_text(text, chunk_chars=limit)

"""Saved KV states of recent prompts, so one llama context serves several conversations' prefixes.

The slots = 1 engine has one context: without this, conversation A's turn evicts conversation B's history and
B's next turn prefills it all again. After each generation the context's sequence is copied out
(`llama_state_seq_get_data`: about 11 KB a token for the bundled model, 12 ms for 1,000 tokens) and kept, least
recently used out beyond `budget_bytes`. A prompt that shares more with a saved state than with the live context
gets that state copied back in (3 ms) before it prefills the rest. The copy is the very cells computed before,
so what the prefix cache mode (`exact`, `longest`) promises holds as for the live context.

Only the engine's worker thread calls these (every llama.cpp call runs there).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from zmqllm.engines.llama_api import clear_memory, copy_in_sequence, copy_out_sequence


@dataclass(frozen=True)
class SavedState:
    tokens: tuple[int, ...]
    exact_upto: int
    """Leading tokens computed exactly as a fresh run computes them (see `LlamaEngine._exact_upto`)."""
    data: Any
    """The sequence's cells as llama.cpp wrote them (a ctypes byte array)."""

    @property
    def size(self) -> int:
        return len(self.data)


def shared_prefix(a: Any, b: Any) -> int:
    """Leading tokens `a` and `b` share."""
    count = 0
    for left, right in zip(a, b):
        if left != right:
            break
        count += 1
    return count


class SavedStates:
    """Up to `budget_bytes` of saved sequence states, least recently used first."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._states: OrderedDict[tuple[int, ...], SavedState] = OrderedDict()
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def save(self, llm: Any, exact_upto: int) -> None:
        """Copy out the live context's sequence (a no-op when an identical one is kept, or it alone is over
        the budget)."""
        tokens = tuple(llm.input_ids[: llm.n_tokens].tolist())
        if not tokens or self.budget_bytes <= 0:
            return
        if tokens in self._states:
            self._states.move_to_end(tokens)
            return
        data = copy_out_sequence(llm, self.budget_bytes)
        if data is None:
            return
        self._states[tokens] = SavedState(tokens, exact_upto, data)
        self.used_bytes += len(data)
        while self.used_bytes > self.budget_bytes:
            _, old = self._states.popitem(last=False)
            self.used_bytes -= old.size

    def best(self, prompt: list[int]) -> tuple[SavedState | None, int]:
        """The saved state sharing the longest prefix with `prompt`, and that length."""
        best: SavedState | None = None
        longest = 0
        for state in self._states.values():
            shared = shared_prefix(state.tokens, prompt)
            if shared > longest:
                best, longest = state, shared
        return best, longest

    def restore(self, llm: Any, state: SavedState) -> bool:
        """Make `state` the live context; False (and an empty context) when llama.cpp refuses it."""
        llm.reset()
        clear_memory(llm)
        if not copy_in_sequence(llm, state.data):
            clear_memory(llm)
            del self._states[state.tokens]
            self.used_bytes -= state.size
            return False
        llm.input_ids[: len(state.tokens)] = state.tokens
        llm.n_tokens = len(state.tokens)
        self._states.move_to_end(state.tokens)
        return True

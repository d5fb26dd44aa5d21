"""Finding the node that holds a task or a run: the answers to one LOOKUP, weighed.

A client may ask any node about any task (`cancel`, `result`) or run (`run --attach`, `cancel`). The node asked
sends LOOKUP to its live peers and forwards the request to the best holder. Several nodes can hold the same id:
after an origin failover, the dead origin's journal says `interrupted` while the node that took over has it
going or finished. So holdings are ranked, and the lookup is settled as soon as no better answer can come.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["task", "run"]
KINDS: tuple[Kind, ...] = ("task", "run")

HOLDINGS = ("going", "replica", "finished", "interrupted")
"""What a node may hold of an id: running now, a copy it would adopt if the run's owner died (runs only,
`core.replica`), ended (its result is final), or cut short by a crash."""
_RANK = {holding: len(HOLDINGS) - i for i, holding in enumerate(HOLDINGS)}


def rank(holding: str | None) -> int:
    """Higher is better; 0 for nothing (or a holding this version does not know)."""
    return _RANK.get(holding or "", 0)


@dataclass
class Lookup:
    """One search for `key` among the peers `asked`."""

    kind: Kind
    key: str
    asked: frozenset[str]
    answers: dict[str, str | None] = field(default_factory=dict)
    """node id → what it holds (None: nothing), from the nodes that answered."""
    epochs: dict[str, int] = field(default_factory=dict)
    """node id → the epoch of the run it holds, where it said (runs only)."""

    def answer(self, node_id: str, holding: str | None, epoch: int | None = None) -> bool:
        """Record one node's answer; False if that node was not asked (a stray or forged FOUND)."""
        if node_id not in self.asked:
            return False
        self.answers[node_id] = holding if rank(holding) else None
        if epoch is not None:
            self.epochs[node_id] = epoch
        return True

    def supersedes(self, epoch: int) -> str | None:
        """A node that makes a run's `epoch` stale: one with it going under an epoch as high or higher, or one
        that finished it (a finished run is never finished again). None when there is none."""
        for node_id in sorted(self.answers):
            holding = self.answers[node_id]
            if holding == "finished" or (holding == "going" and self.epochs.get(node_id, 0) >= epoch):
                return node_id
        return None

    def give_up_on(self, node_id: str) -> None:
        """A peer asked is gone: it will not answer."""
        if node_id in self.asked and node_id not in self.answers:
            self.answers[node_id] = None

    def settled(self) -> bool:
        """Every node asked answered, or one holds it going (nothing ranks higher)."""
        return len(self.answers) >= len(self.asked) or any(h == HOLDINGS[0] for h in self.answers.values())

    def holder(self) -> str | None:
        """The best answer so far: the highest holding, ties to the smallest node id (the same on every node)."""
        held = [(rank(holding), node_id) for node_id, holding in self.answers.items() if rank(holding)]
        if not held:
            return None
        best = max(score for score, _ in held)
        return min(node_id for score, node_id in held if score == best)

    def holding_of(self, node_id: str) -> str | None:
        return self.answers.get(node_id)


_ROW_RANK = {"running": 4, "done": 3, "failed": 3, "cancelled": 3, "replica": 2, "adopted": 1, "interrupted": 1}
"""How telling each node's row of one run is: its orchestrator's live or final row over a replica, and either
over the copy a crash or an adoption left behind."""


def merge_run_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`zmqllm runs` across the mesh: every node's rows, one per run (the most telling), newest first."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        held = best.get(row["run_id"])
        if held is None or _ROW_RANK.get(row.get("state", ""), 0) > _ROW_RANK.get(held.get("state", ""), 0):
            best[row["run_id"]] = row
    return sorted(best.values(), key=lambda row: row.get("created") or 0.0, reverse=True)

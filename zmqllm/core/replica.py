"""Runs without a home node: what a replica holder keeps of another node's workflow run, and who that holder is.

The orchestrator of a run sends one live peer (its *replica holder*) the run's spec and input, then each step's
output as it finishes, then the run's end (`REPLICATE`). When the orchestrator dies, the holder *adopts* the run:
it continues from the outputs it holds, re-running only the steps that had not finished, under the next *epoch*.
Every record carries its epoch; a node that holds a higher epoch of the run answers an older owner `stale`, and
that owner stops (no split brain). An owner that ever had a holder finishes a run only once its holder confirmed
the end, so an owner cut off from the mesh cannot finish a run its holder is finishing elsewhere.

Pure logic: the node feeds messages in and sends what these functions decide.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_REPLICAS = 1024
"""Runs one node holds for others; the oldest ended ones go first, then the oldest of all."""
MAX_REPLICA_BYTES = 256 * 2**20
"""Text (specs, inputs, step outputs) held for others at most: beyond it new records are refused, so peers cannot
make a node hold more than this whatever they send (each record is bounded by the frame size only)."""

RecordKind = Literal["start", "task", "end", "drop"]
RECORD_KINDS: tuple[RecordKind, ...] = ("start", "task", "end", "drop")


@dataclass
class Replica:
    """One run as its holder knows it."""

    run_id: str
    owner_id: str
    owner_name: str
    epoch: int
    workflow: str = ""
    source: str = ""
    spec: str = ""
    input: str = ""
    tasks: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """step key → (output text, record), every finished step so far."""
    ended: bool = False
    adopted: bool = False
    """This node took the run over (it is the owner now; the entry keeps its epoch for fencing)."""
    watchers: list[bytes] = field(default_factory=list)
    """Clients that attached here before the adoption: they follow the run once this node adopts it."""


@dataclass(frozen=True)
class Verdict:
    """The holder's answer to one record."""

    ok: bool
    stale: bool = False
    """A higher epoch of this run exists: the sender must stop it."""
    owner: str = ""
    """Who owns that higher epoch (a name, for the sender's log and its watchers)."""


class ReplicaStore:
    """The runs this node holds for others."""

    def __init__(self, limit: int = MAX_REPLICAS, max_bytes: int = MAX_REPLICA_BYTES) -> None:
        self.replicas: OrderedDict[str, Replica] = OrderedDict()
        self.limit = limit
        self.max_bytes = max_bytes

    def held_bytes(self) -> int:
        return sum(_size(r) for r in self.replicas.values())

    def epoch_of(self, run_id: str) -> int:
        replica = self.replicas.get(run_id)
        return replica.epoch if replica is not None else 0

    def apply(self, run_id: str, epoch: int, kind: str, fields: dict[str, Any], owner_id: str,
              owner_name: str) -> Verdict:
        """Take one record from the run's owner. A lower epoch than held is stale; a `task` or `end` for a run
        not held (this node restarted, or became holder midway) asks for a new `start`."""
        held = self.replicas.get(run_id)
        if held is not None and epoch < held.epoch:
            return Verdict(False, stale=True, owner=held.owner_name)
        if kind == "drop":
            if held is not None and held.epoch == epoch and held.owner_id == owner_id and not held.adopted:
                del self.replicas[run_id]
            return Verdict(True)
        incoming = sum(len(str(fields.get(name) or "")) for name in ("spec", "input", "text"))
        if incoming and self.held_bytes() - (_size(held) if held is not None and kind == "start" else 0) \
                + incoming > self.max_bytes:
            return Verdict(False)  # full: the owner tries again later (or elsewhere, as peers change)
        if kind == "start":
            if held is not None and held.epoch == epoch and (held.owner_id != owner_id or held.adopted):
                return Verdict(False)  # one owner per epoch: another node's start of it is refused
            watchers = held.watchers if held is not None else []
            self.replicas[run_id] = Replica(run_id, owner_id, owner_name, epoch, str(fields.get("workflow", "")),
                                            str(fields.get("source", "")), str(fields.get("spec", "")),
                                            str(fields.get("input", "")), watchers=watchers)
            self.replicas.move_to_end(run_id)
            self._trim()
            return Verdict(True)
        if held is None or held.epoch != epoch or held.owner_id != owner_id or held.adopted:
            return Verdict(False)
        if kind == "task":
            held.tasks[str(fields.get("key", ""))] = (str(fields.get("text", "")), dict(fields.get("record") or {}))
        elif kind == "end":
            held.ended = True
        else:
            return Verdict(False)
        return Verdict(True)

    def orphaned(self, owner_id: str) -> list[Replica]:
        """The runs a lost node owned and had not ended: this node adopts them."""
        return [r for r in self.replicas.values() if r.owner_id == owner_id and not r.ended and not r.adopted]

    def holding(self, run_id: str) -> str | None:
        replica = self.replicas.get(run_id)
        return "replica" if replica is not None and not replica.ended and not replica.adopted else None

    def _trim(self) -> None:
        while len(self.replicas) > self.limit:
            victim = next((k for k, r in self.replicas.items() if r.ended or r.adopted), None)
            del self.replicas[victim if victim is not None else next(iter(self.replicas))]


def _size(replica: Replica) -> int:
    return len(replica.spec) + len(replica.input) + sum(len(text) for text, _ in replica.tasks.values())


def choose_holder(run_id: str, candidates: Iterable[str]) -> str | None:
    """The live peer that holds a run's replica: the highest rendezvous hash of (run, node), so every node
    would name the same one and a peer leaving moves only the runs it held."""
    best: tuple[bytes, str] | None = None
    for node_id in candidates:
        score = hashlib.blake2b(f"{run_id}\0{node_id}".encode(), digest_size=8).digest()
        if best is None or score > best[0]:
            best = (score, node_id)
    return best[1] if best is not None else None

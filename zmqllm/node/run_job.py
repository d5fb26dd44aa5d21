"""One workflow run as its orchestrating node keeps it: the pure `workflow.Run`, the steps running now, and what
replicating it to a holder needs (node/replication.py). Its own module so the orchestrator and the replication,
which both read it, do not import each other."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from zmqllm.workflow import Run, TaskRequest


@dataclass
class Step:
    """One task of a run as it is being executed."""

    request: TaskRequest
    task_id: str
    peer: str | None = None
    tokens: int = 0
    started: float = field(default_factory=time.time)


@dataclass
class RunJob:
    """A run this node orchestrates."""

    run_id: str
    workflow: str
    run: Run
    watchers: list[bytes] = field(default_factory=list)
    running: dict[str, _Step] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Every finished task: key → executed_by, tokens, start and end times (journaled ones marked so)."""
    final: dict[str, Any] | None = None
    cancelling: bool = False
    progress_due: bool = False
    spec_text: str = ""
    source: str = ""
    input_text: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    """Every finished step's output by key (what a new replica holder is sent)."""
    epoch: int = 1
    """1 for a run started here; its holder adopts it as epoch + 1 (node/replication.py)."""
    holder: str | None = None
    """The peer holding this run's replica (its node id), if any now."""
    replicated: bool = False
    """The run has had a holder: its end waits for a holder's confirmation."""
    seq: int = 0
    acked_seq: int = 0
    end_seq: int | None = None
    pending_final: dict[str, Any] | None = None
    """The run's end, computed and waiting for its holder's confirmation before anyone hears it."""
    superseded_by: str | None = None
    """Another node adopted this run (a higher epoch) while this one was cut off: it stopped here."""

    def going(self) -> bool:
        return self.final is None and self.superseded_by is None

"""The shapes of a validated workflow's steps: what `spec.py` builds and the graph, planner and step kinds read.

Why a module of its own: the step graph (`graph.py`) links steps that `spec.py` parses, and `spec.py` checks the
graph; with the shapes here, both read them and neither needs the other's types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from zmqllm.workflow.merge import DEFAULT_SEPARATOR
from zmqllm.workflow.settings import TaskSettings

StepKind = Literal["plain", "fan_out", "split", "loop"]


@dataclass(frozen=True)
class Stage:
    """One task of each round of a loop step."""

    name: str
    prompt: str
    settings: TaskSettings


@dataclass(frozen=True)
class Step:
    """A named unit of work: plain, fan_out, split or loop (see docs/workflows.md)."""

    name: str
    kind: StepKind
    settings: TaskSettings
    needs: tuple[str, ...] = ()
    """The steps whose outputs this one reads, in spec order."""
    optional: bool = False
    prompt: str = ""
    fan_out: int = 1
    distinct_peers: bool = False
    merge: str | None = None
    merge_prompt: str | None = None
    merge_settings: TaskSettings | None = None
    separator: str = DEFAULT_SEPARATOR
    split: str | None = None
    chunk_chars: int | None = None
    chunk_tokens: int | None = None
    text: str = ""
    stages: tuple[Stage, ...] = ()
    max_rounds: int = 1
    until: re.Pattern[str] | None = None
    until_stage: str | None = None

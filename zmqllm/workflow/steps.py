"""How each kind of step becomes tasks, and their outputs become the step's output.

One small class per kind (plain, branches for fan_out and split, loop), each fed
the finished outputs of its own tasks and answering with the tasks to add. They
know nothing of peers, retries or other steps: `plan.Run` owns those, so each
kind's rules (seeds per branch, merges, when a loop ends) read in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from zmqllm.workflow.merge import concat, numbered, vote
from zmqllm.workflow.spec import Step, TaskSettings
from zmqllm.workflow.split import split_text
from zmqllm.workflow.template import render
from zmqllm.workflow.values import WorkflowError

__all__ = ["PendingSplit", "TaskPlan", "StepFailure", "StepRun", "step_run"]


@dataclass(frozen=True)
class TaskPlan:
    """A task a step wants: its key, prompt and settings, and the sibling keys it avoids the peers of."""

    key: str
    prompt: str
    settings: TaskSettings
    siblings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PendingSplit:
    """A split step's input, waiting to be cut into chunks by whoever drives the run.

    Counting a long input's tokens takes seconds (a tokenizer reads ≈ 1 MB/s), too
    long for an event loop, so a run made with `split_inline=False` hands the work
    out: call `chunks()` anywhere (a worker thread), then `Run.split_done`."""

    step: str
    text: str
    chunk_chars: int | None
    chunk_tokens: int | None
    count_tokens: Callable[[str], int] | None

    def chunks(self) -> list[str]:
        """The chunks of `text` (see `split_text`); raises what the token counter raises."""
        return split_text(self.text, chunk_chars=self.chunk_chars, chunk_tokens=self.chunk_tokens,
                          count_tokens=self.count_tokens)


class StepFailure(Exception):
    """The step cannot go on (too many chunks, nothing to split); one line, without the step name."""


class StepRun:
    """One step's progress. `state` is waiting, running, done, failed or skipped."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.state = "waiting"
        self.output: str | None = None
        self.error: str | None = None
        self.total: int | None = None
        """How many tasks the step will run; None until known (a split before it starts)."""
        self.env: Mapping[str, str] = {}

    def start(self, env: Mapping[str, str]) -> list[TaskPlan]:
        """The first tasks, given the input and the outputs of the steps this one needs."""
        self.state = "running"
        self.env = env
        return self._start()

    def _start(self) -> list[TaskPlan]:
        self.total = 1
        return [TaskPlan(self.step.name, render(self.step.prompt, self.env), self.step.settings)]

    def finish(self, key: str, text: str) -> list[TaskPlan]:
        """Take one task's output; returns the tasks that follow from it."""
        self._done(text.strip())
        return []

    def _done(self, output: str) -> None:
        self.state = "done"
        self.output = output


class BranchesRun(StepRun):
    """fan_out copies or split chunks, then a merge (an extra task for `llm`)."""

    def __init__(self, step: Step, max_fan_out: int, count_tokens: Callable[[str], int] | None,
                 split_inline: bool = True) -> None:
        super().__init__(step)
        self.max_fan_out = max_fan_out
        self.count_tokens = count_tokens
        self.split_inline = split_inline
        self.outputs: dict[str, str | None] = {}
        self.pending_split: PendingSplit | None = None
        """A split started with `split_inline=False`: its chunks are awaited (`chunks_ready`)."""

    def _start(self) -> list[TaskPlan]:
        step = self.step
        if step.kind != "split":
            return self._branches([render(step.prompt, self.env)] * step.fan_out)
        if step.split is None:
            raise StepFailure("a split step needs 'split'")
        split = PendingSplit(step.name, self.env[step.split], step.chunk_chars, step.chunk_tokens, self.count_tokens)
        if not self.split_inline:
            self.pending_split = split
            return []
        return self._chunk_branches(split.chunks())

    def chunks_ready(self, chunks: list[str]) -> list[TaskPlan]:
        """The chunks of a pending split arrived: its branch tasks. Raises StepFailure (none, or too many)."""
        self.pending_split = None
        return self._chunk_branches(chunks)

    def _chunk_branches(self, chunks: list[str]) -> list[TaskPlan]:
        self._check_chunks(chunks)
        return self._branches([render(self.step.prompt, {**self.env, "chunk": chunk, "chunk_index": str(index)})
                               for index, chunk in enumerate(chunks, 1)])

    def _branches(self, prompts: list[str]) -> list[TaskPlan]:
        step = self.step
        keys = [f"{step.name}#{index}" for index in range(1, len(prompts) + 1)]
        siblings = tuple(keys) if step.distinct_peers else ()
        self.outputs = dict.fromkeys(keys)
        self.total = len(keys) + (step.merge == "llm")
        return [TaskPlan(key, prompt, self._branch_settings(index), siblings)
                for index, (key, prompt) in enumerate(zip(keys, prompts))]

    def _check_chunks(self, chunks: list[str]) -> None:
        step = self.step
        if not chunks:
            raise StepFailure(f"nothing to split: {{{step.split}}} is empty")
        if len(chunks) > self.max_fan_out:
            limit_key = "chunk_chars" if step.chunk_chars is not None else "chunk_tokens"
            raise StepFailure(f"{{{step.split}}} splits into {len(chunks)} chunks, more than max_fan_out "
                              f"{self.max_fan_out}; raise '{limit_key}' or 'max_fan_out'")

    def _branch_settings(self, index: int) -> TaskSettings:
        """fan_out branch `index` (0-based) samples with seed + index (seed 0 when none is set),
        so copies differ yet a rerun or a resumed run asks for the same ones."""
        settings = self.step.settings
        if self.step.kind != "fan_out":
            return settings
        return replace(settings, seed=(settings.seed or 0) + index)

    def finish(self, key: str, text: str) -> list[TaskPlan]:
        if key not in self.outputs:  # the llm merge task
            self._done(text.strip())
            return []
        self.outputs[key] = text
        if any(output is None for output in self.outputs.values()):
            return []
        outputs = [output or "" for output in self.outputs.values()]
        step = self.step
        if step.merge == "llm":
            if step.merge_prompt is None or step.merge_settings is None:
                raise WorkflowError(f"step {step.name}: merge = 'llm' needs merge_prompt")
            prompt = render(step.merge_prompt, {**self.env, "branches": numbered(outputs)})
            return [TaskPlan(f"{step.name}:merge", prompt, step.merge_settings)]
        self._done(vote(outputs) if step.merge == "vote" else concat(outputs, step.separator))
        return []


class LoopRun(StepRun):
    """Rounds of stages over `{text}`, until a stage's output matches `until` or `max_rounds` ran."""

    def __init__(self, step: Step) -> None:
        super().__init__(step)
        self.text = ""
        self.rounds = 0
        self.stage_index = 0
        self.stage_outputs: dict[str, str] = {}
        self.ended_by: str | None = None
        """"pattern" when `until` matched, "rounds" when max_rounds ran out."""

    def _start(self) -> list[TaskPlan]:
        self.text = render(self.step.text, self.env).strip()
        self.total = self.step.max_rounds * len(self.step.stages)
        return self._next_round()

    def _next_round(self) -> list[TaskPlan]:
        self.rounds += 1
        self.stage_index = 0
        self.stage_outputs = {}
        return [self._stage_task()]

    def _stage_task(self) -> TaskPlan:
        stage = self.step.stages[self.stage_index]
        values: dict[str, Any] = {**self.env, "text": self.text, "round": str(self.rounds), **self.stage_outputs}
        return TaskPlan(f"{self.step.name}@{self.rounds}.{stage.name}", render(stage.prompt, values), stage.settings)

    def finish(self, key: str, text: str) -> list[TaskPlan]:
        step = self.step
        stage = step.stages[self.stage_index]
        output = text.strip()
        self.stage_outputs[stage.name] = output
        if stage.name == step.until_stage and step.until is not None and step.until.search(output):
            return self._end("pattern")
        if self.stage_index + 1 < len(step.stages):
            self.stage_index += 1
            return [self._stage_task()]
        self.text = output
        if self.rounds == step.max_rounds:
            return self._end("rounds")
        return self._next_round()

    def _end(self, how: str) -> list[TaskPlan]:
        self.ended_by = how
        self.total = (self.rounds - 1) * len(self.step.stages) + self.stage_index + 1
        self._done(self.text)
        return []


def step_run(step: Step, max_fan_out: int, count_tokens: Callable[[str], int] | None,
             split_inline: bool = True) -> StepRun:
    """The progress tracker for a step of any kind (`split_inline`: see `BranchesRun`)."""
    if step.kind == "loop":
        return LoopRun(step)
    if step.kind in ("fan_out", "split"):
        return BranchesRun(step, max_fan_out, count_tokens, split_inline)
    return StepRun(step)

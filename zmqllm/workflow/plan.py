"""Running a workflow: a pure state machine that the daemon drives.

A `Run` is told what happened to its tasks (started on a peer, done with a text,
failed with an error) and answers which tasks to dispatch next and how the run
stands. It holds no sockets, clock or randomness, so it is tested in
milliseconds without a mesh. Task keys and prompts depend only on the spec, the
input and earlier outputs, so a run rebuilt with the outputs journaled so far
(`done=`) replays them instantly and asks only for the tasks that had not
finished: that is how `--resume` works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from zmqllm.workflow.spec import TaskSettings, Workflow
from zmqllm.workflow.values import WorkflowError
from zmqllm.workflow.steps import BranchesRun, PendingSplit, StepFailure, StepRun, TaskPlan, step_run

__all__ = ["PendingSplit", "Run", "TaskRequest", "TaskResultLike"]


class _HasText(Protocol):
    text: str


TaskResultLike = str | _HasText
"""A finished task's output: the text, or an object with `.text` (and optionally
`.prompt`: a journaled result whose prompt differs from the one the run would
send now is stale, from another input or spec, and is run again)."""


@dataclass(frozen=True)
class TaskRequest:
    """One LLM task the run wants dispatched now.

    `key` is stable and unique within the run: "draft", "answers#2" (fan_out or
    split branch, 1-based), "answers:merge" (llm merge), "polish@2.critique"
    (loop round 2, stage critique). `avoid` is a snapshot taken when the task was
    handed out: the peers it already failed on and, for distinct_peers, the
    peers its siblings run on; ask `Run.peers_to_avoid(key)` again just before
    placing it when siblings are placed one after another. A pinned `peer`
    wins over `avoid`. `attempt` is 1-based."""

    key: str
    step: str
    prompt: str
    max_tokens: int
    params: dict[str, Any]
    stop: tuple[str, ...]
    model: str | None
    peer: str | None
    avoid: tuple[str, ...]
    attempt: int


@dataclass
class _Task:
    plan: TaskPlan
    step: str
    state: str = "ready"  # ready -> handed -> done | failed; handed -> ready again on a retry
    attempt: int = 1
    peer: str | None = None
    tried: list[str] = field(default_factory=list)


class Run:
    """One run of a workflow on one input. Reports for unknown keys raise KeyError,
    reports for tasks not handed out raise ValueError; reports arriving after the
    run finished (tasks still in flight when it failed) are accepted and ignored."""

    def __init__(self, workflow: Workflow, input: str, *, done: Mapping[str, TaskResultLike] | None = None,
                 count_tokens: Callable[[str], int] | None = None, split_inline: bool = True) -> None:
        self.workflow = workflow
        self.input = input
        self.finished = False
        self.failed = False
        self.error: str | None = None
        self.output: str | None = None
        self.failures: list[str] = []
        """Errors of optional steps that failed (the run went on with "" for them)."""
        self._journal = dict(done or {})
        self._steps: dict[str, StepRun] = {
            step.name: step_run(step, workflow.max_fan_out, count_tokens, split_inline) for step in workflow.steps}
        self._tasks: dict[str, _Task] = {}
        self._splits: list[PendingSplit] = []
        self._advance()

    # -- what the daemon asks -------------------------------------------------------------

    def next_tasks(self) -> list[TaskRequest]:
        """Tasks ready to dispatch, in a deterministic order; each is handed out once
        until it is reported done or failed."""
        if self.finished:
            return []
        ready = [task for task in self._tasks.values() if task.state == "ready"]
        for task in ready:
            task.state = "handed"
        return [self._request(task) for task in ready]

    def splits_wanted(self) -> list[PendingSplit]:
        """Splits to do now (only with `split_inline=False`), each handed out once: run
        `chunks()` anywhere, then report `split_done` or `split_failed`."""
        splits, self._splits = self._splits, []
        return splits

    def peers_to_avoid(self, key: str) -> tuple[str, ...]:
        """Peers the task failed on, then (distinct_peers) the peers its siblings run or ran on."""
        task = self._task(key)
        sibling_peers = [self._tasks[other].peer for other in task.plan.siblings
                         if other != key and other in self._tasks]
        return tuple(dict.fromkeys([*task.tried, *(peer for peer in sibling_peers if peer)]))

    def outstanding(self) -> list[str]:
        """Keys handed out and not yet reported: what to cancel once the run has failed."""
        return [key for key, task in self._tasks.items() if task.state == "handed"]

    def step_states(self) -> list[dict[str, Any]]:
        """Per step, in spec order: name, kind, state, tasks_done, tasks_total (None until
        known; a loop's is its maximum until it ends), rounds, ended_by, output, error."""
        states = []
        for name, run in self._steps.items():
            done = sum(1 for task in self._tasks.values() if task.step == name and task.state == "done")
            states.append({
                "name": name, "kind": run.step.kind, "state": run.state, "optional": run.step.optional,
                "tasks_done": done, "tasks_total": run.total,
                "rounds": getattr(run, "rounds", None), "ended_by": getattr(run, "ended_by", None),
                "output": run.output, "error": run.error,
            })
        return states

    # -- what the daemon reports ----------------------------------------------------------

    def task_started(self, key: str, peer: str) -> None:
        """The task was placed on `peer` (its siblings will avoid it under distinct_peers)."""
        self._handed(key).peer = peer

    def task_done(self, key: str, text: str, peer: str | None = None) -> None:
        task = self._handed(key)
        task.peer = peer or task.peer
        task.state = "done"
        self._finish(task, text)
        self._advance()

    def task_failed(self, key: str, error: str, peer: str | None = None) -> None:
        """Retry on a peer not tried yet while `retries` allow, else fail the step."""
        task = self._handed(key)
        failed_on = peer or task.peer
        if failed_on and failed_on not in task.tried:
            task.tried.append(failed_on)
        task.peer = None
        if not self.finished and task.attempt <= task.plan.settings.retries:
            task.attempt += 1
            task.state = "ready"
            return
        task.state = "failed"
        if self._steps[task.step].state == "running":
            self._fail_step(task.step, f"task '{key}' failed after {task.attempt} "
                                       f"attempt{'s' if task.attempt > 1 else ''}: {error}")
            self._advance()

    def split_done(self, step: str, chunks: list[str]) -> None:
        """A handed-out split's chunks: the step's branches become ready. Ignored once the run finished."""
        run = self._split_step(step)
        if run is None:
            return
        try:
            self._add(step, run.chunks_ready(chunks))
        except StepFailure as exc:
            self._fail_step(step, str(exc))
        self._advance()

    def split_failed(self, step: str, error: str) -> None:
        """A handed-out split could not be done (the token counter failed): the step fails."""
        if self._split_step(step) is not None:
            self._fail_step(step, error)
            self._advance()

    # -- inside ---------------------------------------------------------------------------

    def _split_step(self, name: str) -> BranchesRun | None:
        """The step whose split was handed out, or None when the run has moved past it."""
        run = self._steps.get(name)
        if not isinstance(run, BranchesRun) or run.pending_split is None:
            raise ValueError(f"step {name!r} has no split handed out")
        return None if self.finished or run.state != "running" else run

    def _task(self, key: str) -> _Task:
        try:
            return self._tasks[key]
        except KeyError:
            raise KeyError(f"no task {key!r} in this run") from None

    def _handed(self, key: str) -> _Task:
        task = self._task(key)
        if task.state != "handed":
            raise ValueError(f"task {key!r} is {task.state}, not handed out")
        return task

    def _request(self, task: _Task) -> TaskRequest:
        settings: TaskSettings = task.plan.settings
        return TaskRequest(task.plan.key, task.step, task.plan.prompt, settings.max_tokens, settings.params(),
                           settings.stop, settings.model, settings.peer, self.peers_to_avoid(task.plan.key),
                           task.attempt)

    def _finish(self, task: _Task, text: str) -> None:
        run = self._steps[task.step]
        if self.finished or run.state != "running":
            return
        try:
            plans = run.finish(task.plan.key, text)
        except StepFailure as exc:
            self._fail_step(task.step, str(exc))
            return
        self._add(task.step, plans)

    def _add(self, step: str, plans: list[TaskPlan]) -> None:
        for plan in plans:
            if plan.key in self._tasks:
                raise WorkflowError(f"step {step}: task {plan.key!r} planned twice")
            self._tasks[plan.key] = _Task(plan, step)

    def _fail_step(self, name: str, error: str) -> None:
        run = self._steps[name]
        run.state, run.error = "failed", error
        if run.step.optional:
            run.output = ""
            self.failures.append(f"step '{name}': {error}")
            return
        self.failed = self.finished = True
        self.error = f"step '{name}' failed: {error}"
        for other in self._steps.values():
            if other.state in ("waiting", "running"):
                other.state = "skipped"

    def _env(self) -> dict[str, str]:
        env = {"input": self.input}
        env.update((name, run.output) for name, run in self._steps.items() if run.output is not None)
        return env

    def _advance(self) -> None:
        """Start every step whose inputs are ready and replay journaled outputs, until nothing moves."""
        moved = True
        while moved and not self.finished:
            moved = False
            for name, run in self._steps.items():
                if run.state == "waiting" and all(
                        self._steps[need].state in ("done", "failed") for need in run.step.needs):
                    moved = True
                    try:
                        self._add(name, run.start(self._env()))
                        if isinstance(run, BranchesRun) and run.pending_split is not None:
                            self._splits.append(run.pending_split)
                    except StepFailure as exc:
                        self._fail_step(name, str(exc))
                        if self.finished:
                            return
            for task in list(self._tasks.values()):
                text = self._journaled(task)
                if text is not None:
                    moved = True
                    task.state = "done"
                    self._finish(task, text)
        if not self.finished and all(run.state in ("done", "failed") for run in self._steps.values()):
            self.finished = True
            self.output = self._steps[self.workflow.output].output

    def _journaled(self, task: _Task) -> str | None:
        """The task's journaled output, if it has a fresh one and has never been handed out."""
        if task.state != "ready" or task.attempt != 1 or task.plan.key not in self._journal:
            return None
        result = self._journal.pop(task.plan.key)
        if isinstance(result, str):
            return result
        prompt = getattr(result, "prompt", None)
        return result.text if prompt is None or prompt == task.plan.prompt else None

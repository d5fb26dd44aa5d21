"""A task as its origin tracks it. Pure: no sockets, no clock of its own.

The origin is the node a client submitted to. It owns the task's story from
SUBMIT to the one DONE or ERROR: which node executes it, which tokens have been
forwarded (by sequence number, so none is forwarded twice or out of order), and
the final result that a resent SUBMIT with the same id gets again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from zmqllm.core.generation import GenerationRequest, GenerationResult
from zmqllm.core.prefix import block_hashes, prompt_text

TaskState = Literal["routing", "assigned", "streaming", "done", "failed"]
FINAL_STATES = ("done", "failed")


@dataclass(frozen=True)
class TaskSpec:
    """What the client asked for."""

    task_id: str
    prompt: str
    max_tokens: int
    params: dict[str, Any]
    stop: tuple[str, ...] = ()
    model: str | None = None
    peer: str | None = None
    messages: tuple[dict[str, Any], ...] = ()
    failover: bool = True
    deadline_s: float | None = None
    detach: bool = False
    """No client streams it: it runs to its end, its result is asked for later (and it is replicated)."""

    @classmethod
    def from_submit(cls, fields: Any) -> TaskSpec:
        return cls(
            fields["task_id"],
            fields["prompt"],
            fields["max_tokens"],
            dict(fields["params"]),
            tuple(fields["stop"]),
            fields.get("model"),
            fields.get("peer"),
            tuple(fields.get("messages") or ()),
            fields.get("failover", True),
            fields.get("deadline_s"),
            bool(fields.get("detach")),
        )

    def submit_fields(self) -> dict[str, Any]:
        """The SUBMIT fields that make this task again (what a detached task's replica holds)."""
        return {"task_id": self.task_id, "prompt": self.prompt, "max_tokens": self.max_tokens,
                "params": self.params, "stop": list(self.stop), "model": self.model, "peer": self.peer,
                "messages": list(self.messages) or None, "failover": self.failover, "deadline_s": self.deadline_s,
                "detach": True}

    def request(self, resume_ids: tuple[int, ...] = (), model: str = "") -> GenerationRequest:
        """What the engine runs (continuing after `resume_ids` on a failover), on `model` as the origin resolved it."""
        return GenerationRequest(self.prompt, self.max_tokens, self.params, self.stop, self.messages, resume_ids,
                                 model)


@dataclass
class OriginTask:
    """One task's progress at its origin."""

    spec: TaskSpec
    created: float
    state: TaskState = "routing"
    model: str | None = None
    executor_id: str | None = None
    executor_name: str | None = None
    executed_on: list[str] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    tokens: list[tuple[str, list[int]]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    """The DONE or ERROR fields the task ended with (replayed to a resubmit)."""
    final_type: str | None = None
    failovers: int = 0
    resumed: bool = False
    """A client brought it here from a lost origin with what it had received (`resume_from`)."""
    last_token_at: float | None = None
    """When the latest token reached the origin (the metrics' gap between tokens)."""
    checkpointed: int = 0
    """Tokens already saved in the journal."""
    final_written: bool = False
    """The final message is in the journal too (so its output may leave memory)."""
    avoid: frozenset[str] = frozenset()
    """Peers to place it elsewhere than, when another can take it (a workflow's distinct branches)."""
    told_to_stop: set[str] = field(default_factory=set)
    """Former executors sent a CANCEL because they kept streaming after a failover."""
    cancelling: bool = False
    """A CANCEL went to the executor: if the executor is lost before it answers, the task ends cancelled
    instead of moving to another node."""
    client_left: bool = False
    """Cancelled because its last client went away, not because anyone asked: a client that comes back (a
    resent SUBMIT, a client moving back to this origin) continues it instead of hearing a cancel."""
    output_in_journal: bool = False
    """A finished task whose tokens and text left memory: the journal holds them and replays them."""

    @functools.cached_property
    def prefix(self) -> list[int]:
        """The prompt's block hashes (`zmqllm.core.prefix`), which cache-aware routing matches."""
        return block_hashes(prompt_text(self.spec.prompt, self.spec.messages))

    def resume_from(self, count: int, text: str, ids: Sequence[int]) -> None:
        """Continue a task whose origin was lost: its client had received `count` token events holding `text`
        and `ids`. The first chunk holds them all and the others are empty, so the next token is `count` (the
        client's next seq) and the next executor replays exactly `ids`."""
        if count:
            self.tokens = [(text, list(ids))] + [("", []) for _ in range(count - 1)]
            self.resumed = True

    @property
    def delivered_ids(self) -> tuple[int, ...]:
        """Every token id forwarded so far, in order: what a new executor replays."""
        return tuple(i for _, ids in self.tokens for i in ids)

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def assign(self, node_id: str, name: str, model: str) -> None:
        """The scheduler picked `name` to run the task."""
        self.state, self.executor_id, self.executor_name, self.model = "assigned", node_id, name, model
        self.tried.add(name)

    def accept_token(self, seq: int, text: str, ids: list[int]) -> int | None:
        """A TOKEN from the executor. Returns the sequence number to forward it under,
        or None for a duplicate or out-of-order token (never forwarded)."""
        if self.finished or seq != len(self.tokens):
            return None
        if self.state != "streaming":
            self.state = "streaming"
            if self.executor_name is not None and (not self.executed_on or self.executed_on[-1] != self.executor_name):
                self.executed_on.append(self.executor_name)
        self.tokens.append((text, ids))
        return seq

    def text(self) -> str:
        return "".join(text for text, _ in self.tokens)

    def finish(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The executor's DONE: completes it with what the origin knows (executed_on,
        the full text). Returns the DONE fields to send the client."""
        if self.executor_name is not None and self.executor_name not in self.executed_on:
            self.executed_on.append(self.executor_name)
        done = dict(fields)
        if self.failovers or self.resumed:  # the last executor counted only its own tokens
            usage = dict(done.get("usage", {}))
            usage["completion_tokens"] = len(self.delivered_ids)
            done["usage"] = usage
        done.update(
            task_id=self.task_id,
            executed_by=self.executor_name or done.get("executed_by", ""),
            executed_on=list(self.executed_on),
            text=self.text(),
        )
        self.state, self.final, self.final_type = "done", done, "DONE"
        return done

    def fail(self, code: str, message: str, retryable: bool = False) -> dict[str, Any]:
        """End the task with an error. Returns the ERROR fields to send the client."""
        error = {"task_id": self.task_id, "code": code, "message": message, "retryable": retryable}
        self.state, self.final, self.final_type = "failed", error, "ERROR"
        return error

    def drop_output(self) -> None:
        """Forget a finished task's tokens and text once the journal holds them, so the finished tasks an
        origin remembers cost a few hundred bytes each, not their whole output."""
        self.tokens = []
        if self.final is not None:
            self.final = {k: v for k, v in self.final.items() if k != "text"}
        self.output_in_journal = True

    def summary(self, now: float) -> dict[str, Any]:
        """A row for listings and status."""
        return {
            "task_id": self.task_id,
            "state": self.state,
            "model": self.model,
            "executor": self.executor_name,
            "tokens": len(self.tokens),
            "elapsed_s": round(now - self.created, 3),
        }


def done_fields(name: str, outcome: GenerationResult, timings: dict[str, float]) -> dict[str, Any]:
    """DONE fields for a generation that ran on node `name`."""
    usage = {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens}
    if outcome.cached_tokens:
        usage["cached_tokens"] = outcome.cached_tokens
    return {
        "finish_reason": outcome.finish_reason,
        "usage": usage,
        "timings": timings,
        "executed_by": name,
        "executed_on": [name],
    }

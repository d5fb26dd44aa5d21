"""The executor's side of a task another node assigned here.

An ASSIGN arrives on the ROUTER from the origin's DEALER; the task runs on the
local executor and its tokens, DONE or ERROR go back to that same DEALER. If
the origin vanishes (its connection is gone, it died or left), the work stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zmqllm.engines.base import EngineError, GenerationResult, TokenChunk
from zmqllm.core.protocol import Message
from zmqllm.core.tasks import TaskSpec, done_fields
from zmqllm.core.validation import resume_problem, validate_spec
from zmqllm.node.executor import JobKey
from zmqllm.net.transport import Sent

if TYPE_CHECKING:
    from zmqllm.node.roles import RemoteHost

log = logging.getLogger(__name__)


@dataclass
class RemoteJob:
    """A task this node runs for an origin."""

    task_id: str
    origin_identity: bytes
    origin_id: str
    next_seq: int = 0

    @property
    def key(self) -> JobKey:
        return (self.origin_id, self.task_id)


class RemoteTasks:
    """Tasks assigned to this node by other origins."""

    def __init__(self, node: RemoteHost) -> None:
        self.node = node
        self.jobs: dict[JobKey, RemoteJob] = {}
        """Keyed by (origin node id, task id): each origin names its own tasks."""

    def on_assign(self, origin: bytes, message: Message) -> None:
        task_id = message["task_id"]
        node = self.node
        key = (message.src, task_id)
        if key in self.jobs:
            node.reply(origin, "ACCEPT", re=message.id, task_id=task_id)
            return
        spec = TaskSpec.from_submit(message.fields)  # an ASSIGN carries a SUBMIT's task fields
        problem = _assign_problem(spec, message)
        if problem is not None:
            node.reply(origin, "REJECT", re=message.id, final=True, task_id=task_id, code="bad_request",
                       message=f"{node.settings.name}: {problem}")
            return
        if message["model"] not in node.engine.models:
            node.reply(origin, "REJECT", re=message.id, final=True, task_id=task_id, code="no_peer_for_model",
                       message=f"{node.settings.name} does not serve {message['model']!r}")
            return
        job = RemoteJob(task_id, origin, message.src, message.get("start_seq", 0))
        request = spec.request(tuple(message.get("resume_ids") or ()), message["model"])
        self.jobs[key] = job
        if not node.executor.submit(key, request, lambda chunk: self._on_token(job, chunk),
                                    lambda outcome, timings: self._on_end(job, outcome, timings)):
            del self.jobs[key]
            node.reply(origin, "REJECT", re=message.id, final=True, task_id=task_id, code="busy",
                       message=f"{node.settings.name} is busy ({node.executor.queued} queued)")
            return
        node.reply(origin, "ACCEPT", re=message.id, task_id=task_id)
        log.info("task %s accepted from %s", task_id, message["origin"])

    def on_cancel(self, message: Message) -> bool:
        """A CANCEL from an origin reaches only the task that origin assigned (the node checked `src`)."""
        job = self.jobs.get((message.src, message["task_id"]))
        if job is None:
            return False
        self.node.executor.cancel(job.key)
        return True

    def origin_lost(self, origin_id: str) -> None:
        """The origin died or left: nobody will read these tokens. It is told even so (best effort): an origin
        that was only silent for a while (frozen, overloaded, cut off) reads it when it is back and moves the
        task elsewhere, instead of waiting for tokens that will never come."""
        for job in list(self.jobs.values()):
            if job.origin_id == origin_id:
                self.jobs.pop(job.key)
                self.node.executor.cancel(job.key)
                self.node.reply_error(job.origin_identity, "peer_dead", f"{self.node.settings.name} stopped the "
                                      f"task after {job.next_seq} tokens: its origin fell silent",
                                      task_id=job.task_id, retryable=True)

    def abandon_all(self, reason: str) -> None:
        """This node is stopping: tell each origin its task must move elsewhere."""
        for job in list(self.jobs.values()):
            self.jobs.pop(job.key)
            self.node.reply_error(job.origin_identity, "peer_dead",
                                  f"{self.node.settings.name}: {reason} after {job.next_seq} tokens",
                                  task_id=job.task_id, retryable=True)
            self.node.executor.cancel(job.key)

    def _on_token(self, job: RemoteJob, chunk: TokenChunk) -> None:
        if self.jobs.get(job.key) is not job:
            return
        self.node.reply(job.origin_identity, "TOKEN", task_id=job.task_id, seq=job.next_seq,
                        text=chunk.text, ids=list(chunk.ids))
        job.next_seq += 1

    def origin_failed(self, origin: bytes, sent: Sent) -> None:
        """An origin's connection is gone or it stopped reading: stop its tasks here."""
        for job in [j for j in self.jobs.values() if j.origin_identity == origin]:
            log.warning("task %s: origin %s %s, cancelling", job.task_id, job.origin_id, sent.value)
            self.jobs.pop(job.key)
            self.node.executor.cancel(job.key)
            if sent is Sent.FULL:
                self.node.reply_error(origin, "slow_client", f"{self.node.settings.name}: origin stopped reading "
                                      "the task's tokens", task_id=job.task_id, retryable=True)

    def _on_end(self, job: RemoteJob, outcome: GenerationResult | EngineError, timings: dict[str, float]) -> None:
        if self.jobs.get(job.key) is not job:
            return
        del self.jobs[job.key]
        name = self.node.settings.name
        if isinstance(outcome, EngineError):
            self.node.reply_error(job.origin_identity, outcome.code, outcome.message, task_id=job.task_id)
            return
        self.node.reply(job.origin_identity, "DONE", final=True, task_id=job.task_id,
                        **done_fields(name, outcome, timings))


def _assign_problem(spec: TaskSpec, message: Message) -> str | None:
    """An ASSIGN passes the checks a SUBMIT passes (an origin may be buggy, or not a zmqllm node), and
    its failover fields must fit the task: no more replayed tokens than it may produce."""
    problem = validate_spec(spec)
    if problem is not None:
        return problem
    return resume_problem(spec.max_tokens, message.get("resume_ids") or (), message.get("start_seq") or 0)

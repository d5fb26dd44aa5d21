"""Workflow runs this node orchestrates: the I/O half around the pure `workflow.Run`.

Every step task is an ordinary task this node originates (`Origin.submit_local`):
routed by the scheduler, shown in the dashboards' graph, failed over and
journaled like a client's. The orchestrator feeds each task's end into the run,
cuts split steps' inputs into chunks on a worker thread (counting a long input's
tokens takes seconds, and a stalled loop misses heartbeats), dispatches what the
run says is ready, journals every finished task (so
`--resume` runs only the rest) and streams the run's events to whoever watches.
A run belongs to this node, not to its client: a client going away stops only
the events, never the run.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from zmqllm.core.protocol import Message
from zmqllm.core.replica import Replica
from zmqllm.core.tasks import TaskSpec
from zmqllm.node.replication import Replication
from zmqllm.node.run_job import RunJob, Step
from zmqllm.workflow import PendingSplit, Run, TaskRequest, WorkflowError, parse_workflow

if TYPE_CHECKING:
    from zmqllm.node.roles import OrchestratorHost

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
"""Tokens-so-far of running tasks are reported at most this often per run."""
RUNS_KEPT = 64
"""Finished runs kept in memory (for `--attach`); the journal keeps all of them."""
MAX_RUN_ID_CHARS = 64
TIMING_KEYS = ("ttft_ms", "total_ms", "decode_tok_s")
"""The task timings kept in its record."""


class Orchestrator:
    """The workflow runs of one node."""

    def __init__(self, node: OrchestratorHost) -> None:
        self.node = node
        self.jobs: dict[str, RunJob] = {}
        self.stopping = False
        self.replication = Replication(node, self)
        self._splitting: set[asyncio.Task[None]] = set()

    # -- from clients -----------------------------------------------------------------------

    def on_run(self, client: bytes, message: Message) -> None:
        run_id = message["run_id"]
        if not run_id or len(run_id) > MAX_RUN_ID_CHARS:
            self.node.reply_error(client, "bad_request", f"run_id must be 1-{MAX_RUN_ID_CHARS} characters",
                                  re=message.id)
            return
        job = self.jobs.get(run_id)
        replica = self.replication.store.holding(run_id) if job is None else None
        if message.get("attach") or (job is not None and job.final is None) or replica:
            self._attach(client, run_id, message.id)
        elif message.get("resume"):
            self._resume(client, run_id, message.id)
        elif job is not None or (self.node.journal is not None and self.node.journal.run(run_id) is not None):
            self.node.reply_error(client, "bad_request", f"run {run_id} exists: resume or attach to it",
                                  re=message.id)
        else:
            self._start(client, message, run_id)

    def on_cancel(self, client: bytes, message: Message) -> None:
        job = self.jobs.get(message["run_id"])
        if job is None:
            self.node.reply_error(client, "run_unknown", f"no run {message['run_id']!r} going on "
                                  f"{self.node.settings.name}", re=message.id)
            return
        if job.superseded_by is not None:
            self.node.reply_error(client, "run_unknown", f"run {job.run_id} is orchestrated by "
                                  f"{job.superseded_by} now", re=message.id)
            return
        if client not in job.watchers:
            job.watchers.append(client)
        if job.final is not None:
            self._send(job, client, job.final, final=True)
            return
        log.info("run %s: cancelling", job.run_id)
        job.cancelling = True
        for step in list(job.running.values()):  # a cancel may end a step at once (it leaves `running`)
            self.node.origin.cancel(step.task_id)
        if not job.running:
            self._end(job)

    def holding(self, run_id: str) -> str | None:
        """What this node holds of a run, for a peer looking for it (`core.lookup`): None if nothing."""
        job = self.jobs.get(run_id)
        if job is not None and job.superseded_by is None:
            return "going" if job.final is None else "finished"
        if job is None and self.replication.store.holding(run_id):
            return "replica"
        saved = self.node.journal.run(run_id) if self.node.journal is not None else None
        if saved is None:
            return "interrupted" if job is not None else None
        return {"running": "going", "interrupted": "interrupted", "adopted": "interrupted"}.get(saved["state"],
                                                                                              "finished")

    def epoch_of(self, run_id: str) -> int | None:
        """The epoch of the run as this node holds it (its own job's, or its replica's); None if unknown."""
        job = self.jobs.get(run_id)
        if job is not None:
            return job.epoch
        return self.replication.store.epoch_of(run_id) or None

    def client_failed(self, client: bytes) -> None:
        """A watcher went away or stopped reading: it gets no more events; its runs go on."""
        for job in self.jobs.values():
            if client in job.watchers:
                job.watchers.remove(client)

    def listing(self) -> list[dict[str, Any]]:
        """`zmqllm runs`: this node's runs (the journal's, or this process's), each with who orchestrates it
        and which peer holds its replica, then the runs it holds for other nodes (`state` `replica`)."""
        if self.node.journal is not None:
            rows = self.node.journal.run_rows()
        else:
            rows = [{"run_id": job.run_id, "workflow": job.workflow,
                     "state": job.final.get("state", "failed") if job.final else "running",
                     "tasks_done": len(job.records)} for job in reversed(self.jobs.values())]
        me = self.node.settings.name
        for row in rows:
            job = self.jobs.get(row["run_id"])
            row["orchestrator"] = job.superseded_by or me if job is not None else me
            if job is not None:
                row["epoch"] = job.epoch
                holder = self.node.table.get(job.holder) if job.holder and self.node.table is not None else None
                row["holder"] = holder.name if holder is not None else None
        held = [{"run_id": r.run_id, "workflow": r.workflow, "state": "replica", "orchestrator": r.owner_name,
                 "epoch": r.epoch, "tasks_done": len(r.tasks)}
                for r in reversed(self.replication.store.replicas.values()) if not r.ended and not r.adopted]
        return rows + held

    def fail_all(self, reason: str) -> None:
        """The node is stopping: tell watchers; the journal keeps the runs resumable (interrupted)."""
        self.stopping = True
        for task in self._splitting:
            task.cancel()
        if self.node.journal is not None:
            self.node.journal.interrupt_runs()
        for job in self.jobs.values():
            if job.going() and job.holder is None:  # with a holder, it adopts the run and clients follow it
                for client in job.watchers:
                    self.node.reply(client, "RUN_EVENT", final=True, run_id=job.run_id, event={
                        "type": "error", "run_id": job.run_id, "code": "internal", "retryable": True,
                        "message": f"{reason}; resume with: zmqllm run --resume {job.run_id}"})

    # -- starting ---------------------------------------------------------------------------

    def _start(self, client: bytes, message: Message, run_id: str) -> None:
        spec_text, source = message.get("spec") or "", message.get("source") or "workflow"
        try:
            workflow = parse_workflow(spec_text, source)
        except WorkflowError as exc:
            self.node.reply_error(client, "bad_request", str(exc), re=message.id)
            return
        input_text = message.get("input") or ""
        if self.node.journal is not None:
            self.node.journal.run_started(run_id, workflow.name, source, spec_text, input_text)
        run = Run(workflow, input_text, count_tokens=self.node.engine.token_counter(), split_inline=False)
        job = RunJob(run_id, workflow.name, run, [client], spec_text=spec_text, source=source, input_text=input_text)
        self._launch(job, resumed=False)

    def _resume(self, client: bytes, run_id: str, ref: int) -> None:
        saved = self.node.journal.run(run_id) if self.node.journal is not None else None
        if saved is None:
            self.node.reply_error(client, "run_unknown", f"no run {run_id!r} in the journal of "
                                  f"{self.node.settings.name}", re=ref)
            return
        if saved["state"] == "done":
            self.node.reply(client, "RUN_EVENT", final=True, run_id=run_id, event=saved["final"])
            return
        if saved["state"] == "adopted":
            self.node.reply_error(client, "bad_request", f"run {run_id} was adopted by another node while this "
                                  f"one was cut off: zmqllm run --attach {run_id}", re=ref)
            return
        try:
            workflow = parse_workflow(saved["spec"], saved["source"])
        except WorkflowError as exc:
            self.node.reply_error(client, "bad_request", str(exc), re=ref)
            return
        done = {key: text for key, (text, _) in saved["tasks"].items()}
        records = {key: {**record, "from_journal": True} for key, (_, record) in saved["tasks"].items()}
        self.node.journal.run_started(run_id, workflow.name, saved["source"], saved["spec"], saved["input"])
        log.info("run %s: resuming with %d finished task(s) from the journal", run_id, len(done))
        run = Run(workflow, saved["input"], done=done, count_tokens=self.node.engine.token_counter(),
                  split_inline=False)
        job = RunJob(run_id, workflow.name, run, [client], records=records, spec_text=saved["spec"],
                     source=saved["source"], input_text=saved["input"], outputs=done)
        self._launch(job, resumed=True)

    def adopt(self, replica: Replica, previous_owner: str) -> None:
        """Take over a run whose orchestrator was lost: continue from the outputs its replica holds (node/
        replication.py), re-running only the steps that had not finished."""
        try:
            workflow = parse_workflow(replica.spec, replica.source or "workflow")
        except WorkflowError as exc:
            log.error("run %s: cannot adopt it, its spec does not parse here: %s", replica.run_id, exc)
            return
        done = {key: text for key, (text, _) in replica.tasks.items()}
        records = {key: {**record, "from_replica": True} for key, (_, record) in replica.tasks.items()}
        if self.node.journal is not None:
            self.node.journal.run_started(replica.run_id, workflow.name, replica.source, replica.spec, replica.input)
            for key, (text, record) in replica.tasks.items():
                self.node.journal.run_task_done(replica.run_id, key, text, record)
        log.warning("run %s: adopted from %s (epoch %d) with %d finished task(s)", replica.run_id,
                    previous_owner, replica.epoch, len(done))
        run = Run(workflow, replica.input, done=done, count_tokens=self.node.engine.token_counter(),
                  split_inline=False)
        job = RunJob(replica.run_id, workflow.name, run, list(replica.watchers), records=records,
                     spec_text=replica.spec, source=replica.source, input_text=replica.input, outputs=done,
                     epoch=replica.epoch)
        replica.watchers.clear()
        self._launch(job, resumed=True, adopted_from=previous_owner)

    def _launch(self, job: RunJob, resumed: bool, adopted_from: str | None = None) -> None:
        self.jobs[job.run_id] = job
        event: dict[str, Any] = {"type": "run", "run_id": job.run_id, "orchestrator": self.node.settings.name,
                                 "workflow": job.workflow, "resumed": resumed, "from_journal": sorted(job.records)}
        if adopted_from is not None:
            event.update(adopted_from=adopted_from, epoch=job.epoch, attached=True)
        for client in job.watchers:
            self._send(job, client, event)
        self.replication.started(job)
        self._advance(job)
        self._forget_old()

    def _attach(self, client: bytes, run_id: str, ref: int) -> None:
        job = self.jobs.get(run_id)
        replica = self.replication.store.replicas.get(run_id)
        if job is None and replica is not None and not replica.adopted and not replica.ended:
            if client not in replica.watchers:  # it hears from this node once the run is adopted here
                replica.watchers.append(client)
            return
        if job is None:
            saved = self.node.journal.run(run_id) if self.node.journal is not None else None
            if saved is None or saved["final"] is None:
                state = f"it is {saved['state']}: resume it" if saved else "no such run"
                self.node.reply_error(client, "run_unknown", f"run {run_id!r} is not going on "
                                      f"{self.node.settings.name} ({state})", re=ref)
            else:
                self.node.reply(client, "RUN_EVENT", final=True, run_id=run_id, event=saved["final"])
            return
        if job.superseded_by is not None:
            self.node.reply_error(client, "run_unknown", f"run {run_id} is orchestrated by {job.superseded_by} "
                                  f"now, not {self.node.settings.name}", re=ref)
            return
        self._send(job, client, {"type": "run", "run_id": run_id, "orchestrator": self.node.settings.name,
                                 "workflow": job.workflow, "attached": True})
        if job.final is not None:
            self._send(job, client, job.final, final=True)
        elif client not in job.watchers:
            job.watchers.append(client)

    # -- driving the run --------------------------------------------------------------------

    def _advance(self, job: RunJob) -> None:
        """Dispatch what is ready; end the run once it is finished and nothing runs."""
        if not job.going() or job.pending_final is not None:
            return
        for split in job.run.splits_wanted():
            task = asyncio.get_running_loop().create_task(self._split(job, split), name=f"split {job.run_id}")
            self._splitting.add(task)
            task.add_done_callback(self._splitting.discard)
        if not job.cancelling:
            for request in job.run.next_tasks():
                self._dispatch(job, request)
        if (job.run.finished or job.cancelling) and not job.running:
            self._end(job)

    async def _split(self, job: RunJob, split: PendingSplit) -> None:
        """Cut a split step's input on a worker thread, then go on with the run on the loop."""
        try:
            chunks = await asyncio.to_thread(split.chunks)
        except Exception as exc:  # the token counter failed (the model closed under it, a bug)
            if job.final is None and not self.stopping:
                log.warning("run %s: splitting the input of step %s failed: %s", job.run_id, split.step, exc)
                job.run.split_failed(split.step, f"splitting failed: {exc}")
                self._advance(job)
            return
        if job.final is None and not self.stopping:
            job.run.split_done(split.step, chunks)
            self._advance(job)

    def _dispatch(self, job: RunJob, request: TaskRequest) -> None:
        task_id = f"{job.run_id}.{request.key}.{secrets.token_hex(3)}"[:128]
        spec = TaskSpec(task_id, request.prompt, request.max_tokens, dict(request.params), tuple(request.stop),
                        request.model, request.peer)
        step = Step(request, task_id)
        job.running[request.key] = step
        problem = self.node.origin.submit_local(
            spec, lambda type_, fields: self._on_task(job, step, type_, fields), job.run.peers_to_avoid(request.key))
        if problem is not None:
            del job.running[request.key]
            job.run.task_failed(request.key, problem)
            return
        task = self.node.origin.tasks.get(task_id)
        placed = job.running.get(request.key) is step and task is not None and not task.finished
        if placed and task is not None and task.executor_name:
            step.peer = task.executor_name
            job.run.task_started(request.key, step.peer)
            self._emit(job, {"type": "task", "key": request.key, "step": request.step, "state": "started",
                             "peer": step.peer, "attempt": request.attempt, "task_id": task_id})

    def _on_task(self, job: RunJob, step: Step, type_: str, fields: dict[str, Any]) -> None:
        key = step.request.key
        if type_ == "TOKEN":
            step.tokens += 1
            self._progress_soon(job)
        elif type_ == "FAILOVER":
            step.peer = fields.get("to") or step.peer
            if step.peer:
                job.run.task_started(key, step.peer)
            self._emit(job, {"type": "task", "key": key, "step": step.request.step, "state": "failover",
                             "from": fields.get("from"), "peer": step.peer, "reason": fields.get("reason")})
        elif type_ in ("DONE", "ERROR"):
            job.running.pop(key, None)
            asyncio.get_running_loop().call_soon(self._task_ended, job, step, type_, fields)

    def _task_ended(self, job: RunJob, step: Step, type_: str, fields: dict[str, Any]) -> None:
        """Outside the origin's call stack: feed the run, journal, dispatch what follows."""
        if self.stopping or not job.going():
            return
        request, key = step.request, step.request.key
        ended = time.time()
        cancelled = type_ == "DONE" and fields.get("finish_reason") == "cancelled"
        if type_ == "DONE" and not cancelled:
            record = {"key": key, "step": request.step, "executed_by": fields.get("executed_by"),
                      "executed_on": fields.get("executed_on"), "tokens": step.tokens,
                      "started": round(step.started, 4), "ended": round(ended, 4),
                      "attempt": request.attempt, "task_id": step.task_id,
                      **{k: v for k, v in (fields.get("timings") or {}).items() if k in TIMING_KEYS}}
            job.records[key] = record
            text = str(fields.get("text", ""))
            job.outputs[key] = text
            if self.node.journal is not None:
                self.node.journal.run_task_done(job.run_id, key, text, record)
            self.replication.task_done(job, key, text, record)
            self._emit(job, {"type": "task", **record, "state": "done"})
            job.run.task_done(key, text, fields.get("executed_by") or None)
        else:
            error = "cancelled" if cancelled else f"{fields.get('code')}: {fields.get('message')}"
            self._emit(job, {"type": "task", "key": key, "step": request.step, "state": "failed",
                             "peer": step.peer, "error": error, "attempt": request.attempt})
            job.run.task_failed(key, error, step.peer)
        if job.run.finished and not job.cancelling:
            for other in list(job.running.values()):  # a failed run stops its other tasks
                self.node.origin.cancel(other.task_id)
        self._advance(job)

    def _end(self, job: RunJob) -> None:
        run = job.run
        steps = [{k: v for k, v in state.items() if v is not None} for state in run.step_states()]
        tasks = sorted(job.records.values(), key=lambda record: record.get("started", 0))
        base = {"run_id": job.run_id, "workflow": job.workflow, "steps": steps, "tasks": tasks,
                "failures": list(run.failures)}
        if job.cancelling and not (run.finished and not run.failed):
            final = {"type": "done", **base, "state": "cancelled", "finish_reason": "cancelled", "output": None}
        elif run.failed:
            final = {"type": "error", **base, "state": "failed", "code": "step_failed", "message": run.error,
                     "retryable": True}
        else:
            final = {"type": "done", **base, "state": "done", "finish_reason": "stop", "output": run.output}
        job.pending_final = final
        if self.replication.may_end(job):
            self.commit_end(job)
        else:
            log.info("run %s %s here: waiting for its replica's holder to confirm", job.run_id, final["state"])

    def commit_end(self, job: RunJob) -> None:
        """The run's end is final (its holder confirmed it, or it never had one): journal it, tell watchers."""
        final = job.pending_final
        if final is None or not job.going():
            return
        job.final, job.pending_final = final, None
        if self.node.journal is not None:
            self.node.journal.run_finished(job.run_id, final["state"], final)
        log.info("run %s %s", job.run_id, final["state"])
        for client in job.watchers:
            self._send(job, client, final, final=True)

    def supersede(self, job: RunJob, owner: str) -> None:
        """Another node adopted this run under a higher epoch while this one was cut off: stop it here, finish
        nothing, and send watchers there."""
        if not job.going():
            return
        job.superseded_by = owner
        log.warning("run %s was adopted by %s while this node was cut off: stopping it here", job.run_id, owner)
        for step in list(job.running.values()):
            self.node.origin.cancel(step.task_id)
        event = {"type": "error", "run_id": job.run_id, "code": "run_moved", "retryable": True,
                 "message": f"run {job.run_id} was adopted by {owner} while {self.node.settings.name} was cut off "
                            f"from the mesh: zmqllm run --attach {job.run_id}"}
        if self.node.journal is not None:
            self.node.journal.run_finished(job.run_id, "adopted", event)
        for client in job.watchers:
            self._send(job, client, event, final=True)

    # -- events to watchers ----------------------------------------------------------------------

    def _emit(self, job: RunJob, event: dict[str, Any]) -> None:
        event = {**event, "run_id": job.run_id}
        for client in job.watchers:
            self._send(job, client, event)

    def _send(self, job: RunJob, client: bytes, event: dict[str, Any], final: bool = False) -> None:
        self.node.reply(client, "RUN_EVENT", final=final, run_id=job.run_id, event=event)

    def _progress_soon(self, job: RunJob) -> None:
        if not job.progress_due:
            job.progress_due = True
            asyncio.get_running_loop().call_later(PROGRESS_INTERVAL_S, self._progress, job)

    def _progress(self, job: RunJob) -> None:
        job.progress_due = False
        if job.final is None and job.running:
            self._emit(job, {"type": "progress", "tasks": [
                {"key": key, "step": step.request.step, "peer": step.peer, "tokens": step.tokens}
                for key, step in job.running.items()]})

    def _forget_old(self) -> None:
        finished = [run_id for run_id, job in self.jobs.items() if job.final is not None]
        for run_id in finished[: max(0, len(finished) - RUNS_KEPT)]:
            del self.jobs[run_id]

"""The origin's side of a task: from a client's SUBMIT to its one DONE or ERROR.

The node a client submits to places the task (here or on a peer, through the
scheduler), relays the executor's tokens to the client in order, and ends the
task exactly once — also when the executor dies or the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from zmqllm.engines.base import EngineError, GenerationResult, TokenChunk
from zmqllm.core.protocol import Message
from zmqllm.core.prefix import Placements, prompt_text
from zmqllm.core.scheduler import CACHE_AWARE, Candidate, NoRoute, Router, choose_executor
from zmqllm.core.tasks import OriginTask, TaskSpec, done_fields
from zmqllm.core.validation import resume_problem, validate_spec
from zmqllm.net.transport import Sent
from zmqllm.node.journal import JOURNAL_ERRORS, Chunks

if TYPE_CHECKING:
    from zmqllm.node.roles import OriginHost

log = logging.getLogger(__name__)

TaskListener = Callable[[str, dict[str, Any]], None]
FINISHED_KEPT = 1024
"""Finished tasks remembered so a resent SUBMIT gets the same answer, not a second run (beyond them, the
journal answers). With a journal their output is not kept in memory: the journal replays it."""


class Origin:
    """Tasks this node accepted from clients."""

    def __init__(self, node: OriginHost, routing: str = CACHE_AWARE) -> None:
        self.node = node
        self.router = Router(routing, random.Random())
        self.placements = Placements()
        """Prompts this origin saw answered on each node: cache-aware routing knows them before a heartbeat."""
        """Where tasks go among the able nodes (`routing`); its random source is this origin's own."""
        self.tasks: OrderedDict[str, OriginTask] = OrderedDict()
        self.clients: dict[str, list[bytes]] = {}
        self.listeners: dict[str, TaskListener] = {}
        """In-process watchers of a task (the workflow orchestrator), called with each message type and fields."""
        self.deadlines: dict[str, asyncio.TimerHandle] = {}
        """The deadline timers of unfinished tasks, cancelled when their task ends."""
        self.mine_when_reported: dict[str, int] = {}
        """Per peer name: how many of this origin's tasks it ran when its last heartbeat's load came (the
        scheduler subtracts them from the report and counts this origin's own exactly)."""
        self.cancellers: dict[str, list[tuple[bytes, int]]] = {}
        """Who asked to cancel a task without reading its stream (`zmqllm cancel`, a forwarding node), with
        their CANCEL's id: its final message answers them, carrying that id."""

    def in_flight(self) -> int:
        return sum(1 for t in self.tasks.values() if not t.finished)

    # -- from clients ------------------------------------------------------------

    def on_submit(self, client: bytes, message: Message) -> None:
        spec = TaskSpec.from_submit(message.fields)
        problem = validate_spec(spec)
        if problem is not None:
            self.node.reply_error(client, "bad_request", problem, re=message.id, task_id=spec.task_id)
            return
        resume_ids, start_seq = list(message.get("resume_ids") or ()), message.get("start_seq") or 0
        problem = resume_problem(spec.max_tokens, resume_ids, start_seq, whole=True)
        if problem is not None:
            self.node.reply_error(client, "bad_request", problem, re=message.id, task_id=spec.task_id)
            return
        existing = self.tasks.get(spec.task_id) or self._from_journal(spec)
        if existing is not None and not _reopens(existing):
            self._attach(client, existing, message.id)
            return
        if existing is not None:  # it ended only for want of a client (or a crash here): its client is back
            log.info("task %s: its client is back, continuing it after %d tokens", spec.task_id, start_seq)
            self._forget(spec.task_id)
        task = OriginTask(spec, self.node.clock())
        task.resume_from(start_seq, message.get("resume_text") or "", resume_ids)  # its origin was lost
        problem = self._record(task)  # on disk before the client hears of it
        if problem is not None:
            self.node.reply_error(client, "internal", problem, re=message.id, task_id=spec.task_id, retryable=True)
            return
        self.clients[spec.task_id] = [] if spec.detach else [client]  # a detached task goes on without it
        self.node.reply(client, "ACCEPTED", re=message.id, task_id=spec.task_id, origin=self.node.settings.name)
        log.info("task %s accepted (model=%s, peer=%s%s)", spec.task_id, spec.model, spec.peer,
                 f", resumed after {start_seq} tokens from a lost origin" if task.resumed else "")
        if len(task.delivered_ids) >= spec.max_tokens:  # its client had every token: only the ending was lost
            self._end_done(task, {"finish_reason": "length", "usage": {"prompt_tokens": 0}, "timings": {},
                                  "executed_by": "", "executed_on": []})
            return
        self._start(task)
        if spec.detach:
            self.node.orchestrator.replication.detached_started(spec)

    def adopt_detached(self, fields: dict[str, Any], previous_owner: str) -> None:
        """A detached task whose origin was lost, from the replica this node held: it runs again here from the
        start (nobody saw its tokens) under the same id, so `zmqllm result ID` finds it here."""
        try:
            spec = TaskSpec.from_submit(fields)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("cannot adopt a detached task from %s: its replica is malformed (%s)", previous_owner, exc)
            return
        problem = validate_spec(spec)
        if problem is not None or spec.task_id in self.tasks:
            log.error("cannot adopt detached task %s from %s: %s", spec.task_id, previous_owner,
                      problem or "this node holds a task with that id")
            return
        task = OriginTask(spec, self.node.clock())
        if self._record(task) is not None:
            return
        self.clients[spec.task_id] = []
        log.warning("task %s (detached): adopted from %s, running it again", spec.task_id, previous_owner)
        self._start(task)
        self.node.orchestrator.replication.detached_started(spec)

    def submit_local(self, spec: TaskSpec, listener: TaskListener, avoid: Iterable[str] = ()) -> str | None:
        """A task from inside this node (a workflow step), routed like any client's and journaled too; its
        messages go to `listener`. Returns why it cannot run, or None once it is accepted."""
        problem = validate_spec(spec)
        if problem is not None or spec.task_id in self.tasks:
            return problem or f"task id {spec.task_id} is taken"
        task = OriginTask(spec, self.node.clock(), avoid=frozenset(avoid))
        problem = self._record(task)
        if problem is not None:
            return problem
        self.listeners[spec.task_id] = listener
        self._start(task)
        return None

    def _record(self, task: OriginTask) -> str | None:
        """Journal an accepted task, then remember it. Returns why it cannot be accepted (the journal
        failed: then nothing is kept, so nothing is left half-done), or None."""
        if self.node.journal is not None:
            try:
                self.node.journal.accepted(task)
            except JOURNAL_ERRORS as exc:
                log.error("task %s refused: cannot write it to the journal %s: %s", task.task_id,
                          self.node.journal.path, exc)
                return f"node {self.node.settings.name} cannot journal task {task.task_id}: {exc}"
        self.tasks[task.task_id] = task
        return None

    def _start(self, task: OriginTask) -> None:
        """Arm its deadline, tell dashboards, and place it."""
        if task.spec.deadline_s is not None:
            self.deadlines[task.task_id] = asyncio.get_running_loop().call_later(task.spec.deadline_s,
                                                                                 self._expire, task)
        self._publish_task(task)
        self._route(task)

    def cancel(self, task_id: str) -> None:
        """Stop a task this node is origin of (it ends `done`, finish_reason cancelled)."""
        task = self.tasks.get(task_id)
        if task is not None and not task.finished:
            self._cancel(task)

    def on_cancel(self, client: bytes, message: Message) -> bool:
        task = self.tasks.get(message["task_id"])
        if task is None:
            return False
        if task.finished:
            self._send_final(client, task, re=message.id)
            return True
        if client not in self.clients.get(task.task_id, []):  # its stream's reader gets the DONE anyway
            self.cancellers.setdefault(task.task_id, []).append((client, message.id))
        if not task.cancelling:
            self._cancel(task)
        return True

    def holding(self, task_id: str) -> str | None:
        """What this node holds of a task, for a peer looking for it (`core.lookup`): None if nothing."""
        task = self.tasks.get(task_id)
        if task is not None and not task.finished:
            return "going"
        found = self.result(task_id)
        if found is None:
            return None
        return "interrupted" if str((found.get("error") or {}).get("message", "")).startswith("interrupted") \
            else "finished"

    def _attach(self, client: bytes, task: OriginTask, ref: int) -> None:
        """A resent SUBMIT: the same stream again from the start, never a second run."""
        self.node.reply(client, "ACCEPTED", re=ref, task_id=task.task_id, origin=self.node.settings.name)
        tokens, final = self._output(task)
        for seq, (text, ids) in enumerate(tokens):
            self.node.reply(client, "TOKEN", task_id=task.task_id, seq=seq, text=text, ids=ids)
        if task.finished:
            self._send_final(client, task, final)
        elif client not in self.clients.setdefault(task.task_id, []):
            self.clients[task.task_id].append(client)

    # -- placing -------------------------------------------------------------------

    def _busy(self) -> dict[str, int]:
        """This origin's unfinished tasks per executor name."""
        busy: dict[str, int] = {}
        for task in self.tasks.values():
            if not task.finished and task.executor_name:
                busy[task.executor_name] = busy.get(task.executor_name, 0) + 1
        return busy

    def busy_executor_ids(self) -> set[str]:
        """Nodes running an unfinished task of this origin (their links stay open)."""
        return {task.executor_id for task in self.tasks.values() if not task.finished and task.executor_id}

    def load_reported(self, name: str) -> None:
        """A peer's heartbeat just brought its load: remember how much of it is this origin's."""
        self.mine_when_reported[name] = self._busy().get(name, 0)

    def _candidates(self) -> list[Candidate]:
        node = self.node
        if node.table is None:
            return []
        busy = self._busy()
        me = node.identity()
        own = node.load()
        mine_here = busy.get(me.name, 0)
        result = [Candidate(me.name, me.models, "alive", me.slots, own.active + own.queued, mine_here, True,
                            reported_mine=mine_here, loaded=me.loaded, cache=own.cache,
                            speed=own.speed)]  # its own load: exact
        for peer in node.table.peers():
            load = peer.load
            result.append(Candidate(peer.name, peer.identity.models, peer.state, peer.identity.slots,
                                    load.active + load.queued, busy.get(peer.name, 0),
                                    reported_mine=self.mine_when_reported.get(peer.name),
                                    loaded=peer.identity.loaded, cache=self.placements.held(peer.name, load.cache),
                                    speed=load.speed))
        return result

    def _route(self, task: OriginTask, failover_reason: str | None = None) -> None:
        """Place the task; a node that cannot take it is skipped for the next one.
        On a failover the new executor continues after the tokens already delivered."""
        node = self.node
        spec = task.spec
        pinned = spec.peer if not task.failovers else None  # a pinned peer that died is left behind
        previous = task.executor_name
        while True:
            exclude = set() if pinned else task.tried | task.avoid
            try:
                chosen, model = choose_executor(self._candidates(), task.model or spec.model, pinned, exclude,
                                                self.router, task.prefix)
            except NoRoute as exc:
                if task.avoid and exc.code == "no_peer_for_model":
                    task.avoid = frozenset()  # a preference only: any node rather than none
                    continue
                if failover_reason is not None:
                    self._end_error(task, "peer_dead", f"{failover_reason}; cannot resume: {exc.message}", True)
                elif exc.code == "no_peer_for_model" and task.tried:
                    self._end_error(task, "busy", f"every node serving the model refused the task ({exc.message})", True)
                else:
                    self._end_error(task, exc.code, exc.message)
                return
            if chosen.is_self:
                task.assign(node.node_id, chosen.name, model)
                self._announce_failover(task, previous, failover_reason)
                self._run_here(task)
                return
            peer = node.table.by_name(chosen.name) if node.table is not None else None
            if peer is None:  # gone from the table since the candidates were listed
                if pinned:
                    self._end_error(task, "peer_dead", f"node {chosen.name!r} left the mesh", True)
                    return
                task.tried.add(chosen.name)
                continue
            task.assign(peer.node_id, peer.name, model)
            resume = task.delivered_ids
            sent = node.send_to_peer(peer.node_id, "ASSIGN", task_id=task.task_id, prompt=spec.prompt,
                                     max_tokens=spec.max_tokens, params=spec.params, stop=list(spec.stop),
                                     model=model, origin=node.settings.name, messages=list(spec.messages) or None,
                                     resume_ids=list(resume) or None, start_seq=len(task.tokens) or None)
            if sent is Sent.OK:
                log.info("task %s assigned to %s", task.task_id, peer.name)
                self._announce_failover(task, previous, failover_reason)
                return
            if pinned:
                self._end_error(task, "peer_dead", f"node {peer.name!r} cannot be reached", True)
                return

    def _expire(self, task: OriginTask) -> None:
        if not task.finished:
            self._end_error(task, "deadline", f"task {task.task_id} passed its {task.spec.deadline_s:g} s deadline "
                            f"after {len(task.tokens)} tokens")

    def _fail_over(self, task: OriginTask, reason: str) -> None:
        """The executor is gone mid-task: continue on another node serving the model,
        from the tokens already delivered (unless the client said --no-failover, or cancelled it)."""
        if task.cancelling:
            log.info("task %s: %s before confirming its cancel", task.task_id, reason)
            self._end_cancelled(task)
            return
        if not task.spec.failover:
            self._end_error(task, "peer_dead", f"{reason} after {len(task.tokens)} tokens (failover off)", True)
            return
        log.info("task %s: %s after %d tokens, failing over", task.task_id, reason, len(task.tokens))
        task.failovers += 1
        self.node.stats.failed_over(len(task.tokens))
        task.state = "routing"
        self._route(task, failover_reason=reason)

    def _announce_failover(self, task: OriginTask, previous: str | None, reason: str | None) -> None:
        self._publish_task(task)
        if reason is not None and previous is not None:
            self._to_clients(task, "FAILOVER", task_id=task.task_id, at_seq=len(task.tokens), reason=reason,
                             **{"from": previous, "to": task.executor_name or ""})

    def _run_here(self, task: OriginTask) -> None:
        spec = task.spec
        request = spec.request(task.delivered_ids, task.model or "")
        counter = iter(range(len(task.tokens), spec.max_tokens + 1))

        def on_token(chunk: TokenChunk) -> None:
            self._relay_token(task, next(counter), chunk.text, list(chunk.ids))

        def on_end(outcome: GenerationResult | EngineError, timings: dict[str, float]) -> None:
            if isinstance(outcome, EngineError):
                self._end_error(task, outcome.code, outcome.message)
            else:
                self._end_done(task, done_fields(self.node.settings.name, outcome, timings))

        if not self.node.executor.submit((self.node.node_id, task.task_id), request, on_token, on_end):
            task.tried.add(self.node.settings.name)
            if task.spec.peer:
                self._end_error(task, "busy", f"node {task.spec.peer!r} is busy (queue full)", True)
            else:
                self._route(task)

    # -- from executors ---------------------------------------------------------------

    def on_executor_message(self, message: Message) -> None:
        task = self.tasks.get(message.get("task_id") or "")
        if task is None or task.finished or message.src != task.executor_id:
            if task is not None and message.type == "TOKEN" and message.src not in task.told_to_stop:
                # a node we gave up on (frozen, partitioned) is still working on it: stop it
                task.told_to_stop.add(message.src)
                self.node.send_to_peer(message.src, "CANCEL", task_id=task.task_id)
            return  # late or stray: the task has moved on
        kind = message.type
        if kind == "TOKEN":
            self._relay_token(task, message["seq"], message["text"], message["ids"])
        elif kind == "DONE":
            self._end_done(task, dict(message.fields))
        elif kind == "REJECT":
            log.info("task %s rejected by %s: %s", task.task_id, task.executor_name, message["message"])
            if task.cancelling:
                self._end_cancelled(task)
            elif task.spec.peer:
                self._end_error(task, message["code"], message["message"], message["code"] == "busy")
            else:
                self._route(task)
        elif kind == "ERROR" and message["code"] == "peer_dead" and message["retryable"]:
            self._fail_over(task, f"executor {task.executor_name} stopped")  # it is shutting down
        elif kind == "ERROR":
            self._end_error(task, message["code"], message["message"], message["retryable"])

    def executor_lost(self, node_id: str, name: str, state: str) -> None:
        """A peer died or left: its tasks cannot finish there, and its caches are gone."""
        self.placements.forget(name)
        for task in list(self.tasks.values()):
            if not task.finished and task.executor_id == node_id:
                self._fail_over(task, f"executor {name} is {state}")

    def fail_all(self, code: str, text: str) -> None:
        for task in list(self.tasks.values()):
            if not task.finished:
                self._end_error(task, code, text, True)

    # -- towards the client --------------------------------------------------------------

    def _relay_token(self, task: OriginTask, seq: int, text: str, ids: list[int]) -> None:
        was_streaming = task.state == "streaming"
        out_seq = task.accept_token(seq, text, ids)
        if out_seq is None:
            return
        now = self.node.clock()
        self.node.stats.token(now - task.created, None if task.last_token_at is None else now - task.last_token_at)
        task.last_token_at = now
        if not was_streaming:
            self._publish_task(task)
        if self.node.events.wanted():
            self.node.publish({"k": "token", "task_id": task.task_id, "seq": out_seq, "text": text})
        self._to_clients(task, "TOKEN", task_id=task.task_id, seq=out_seq, text=text, ids=ids)

    def _end_done(self, task: OriginTask, fields: dict[str, Any]) -> None:
        if task.finished:
            return
        done = task.finish(fields)
        if task.executor_name and task.model and done.get("finish_reason") != "cancelled":
            spec = task.spec
            self.placements.remember(task.executor_name, task.model,
                                     prompt_text(spec.prompt, spec.messages, str(done.get("text", ""))))
        self._publish_task(task, finish_reason=done.get("finish_reason", ""))
        log.info("task %s done on %s (%s, %d tokens)", task.task_id, task.executor_name, done.get("finish_reason"),
                 len(task.tokens))
        self._to_clients(task, "DONE", **done)
        self._ended(task)

    def _end_error(self, task: OriginTask, code: str, text: str, retryable: bool = False) -> None:
        if task.finished:
            return
        error = task.fail(code, text, retryable)  # first, so the executor's own ending is ignored
        self._publish_task(task, error=f"{code}: {text}")
        if task.executor_id and task.executor_id != self.node.node_id:
            self.node.send_to_peer(task.executor_id, "CANCEL", task_id=task.task_id)
        elif task.executor_id:
            self.node.executor.cancel((self.node.node_id, task.task_id))
        log.info("task %s failed: %s: %s", task.task_id, code, text)
        self._to_clients(task, "ERROR", **error)
        self._ended(task)

    def _ended(self, task: OriginTask) -> None:
        """After a task's one final message: its timer goes, its output leaves memory when the journal
        holds all of it, and the oldest finished tasks are forgotten."""
        timer = self.deadlines.pop(task.task_id, None)
        if timer is not None:
            timer.cancel()
        self.node.stats.task_ended(task.final_type or "ERROR", task.final or {}, task.model,
                                   self.node.clock() - task.created)
        if task.final_written:
            task.drop_output()
        if task.spec.detach:
            self.node.orchestrator.replication.detached_ended(task.task_id)
        self._forget_old()

    def _cancel(self, task: OriginTask) -> None:
        """Ask the executor to stop (it answers with its DONE, cancelled), or end the task here when none
        runs it or none can be told."""
        if task.executor_id == self.node.node_id:
            task.cancelling = True
            self.node.executor.cancel((self.node.node_id, task.task_id))
        elif task.executor_id and self.node.send_to_peer(task.executor_id, "CANCEL", task_id=task.task_id) is Sent.OK:
            task.cancelling = True
        else:
            self._end_cancelled(task)

    def _end_cancelled(self, task: OriginTask) -> None:
        self._end_done(task, {"finish_reason": "cancelled", "usage": {"prompt_tokens": 0,
                              "completion_tokens": len(task.tokens)}, "timings": {}, "executed_by": "",
                              "executed_on": []})

    def _from_journal(self, spec: TaskSpec) -> OriginTask | None:
        """A task this node finished and no longer holds (it restarted, or forgot it): the same answer again,
        straight from the journal (not kept in memory)."""
        found = self.node.journal.replay(spec.task_id) if self.node.journal is not None else None
        if found is None:
            return None
        chunks, final_type, final = found
        return OriginTask(spec, self.node.clock(), state="done" if final_type == "DONE" else "failed",
                          tokens=chunks, final=final, final_type=final_type)

    def _output(self, task: OriginTask) -> tuple[Chunks, dict[str, Any] | None]:
        """A task's tokens and final message: from memory, or from the journal once they left memory."""
        if task.output_in_journal and self.node.journal is not None:
            found = self.node.journal.replay(task.task_id)
            if found is not None:
                return found[0], found[2]
        return task.tokens, task.final

    def listing(self) -> list[dict[str, Any]]:
        """`zmqllm tasks`: the journal, or this run's tasks when there is none."""
        if self.node.journal is not None:
            return self.node.journal.rows()
        now = self.node.clock()
        return [task.summary(now) for task in reversed(self.tasks.values())]

    def result(self, task_id: str) -> dict[str, Any] | None:
        """`zmqllm result`: one task, its text and its ending."""
        if self.node.journal is not None:
            return self.node.journal.result(task_id)
        task = self.tasks.get(task_id)
        return None if task is None else {**task.summary(self.node.clock()), "text": task.text()}

    def checkpoint(self) -> None:
        """Save the progress of streaming tasks (bounded loss if this node dies), and prune the journal
        to its retention (the tasks it prunes are forgotten here too)."""
        journal = self.node.journal
        if journal is None:
            return
        for task in self.tasks.values():
            if not task.finished and len(task.tokens) != task.checkpointed:
                self._journal(task)
        try:
            pruned = journal.prune()
        except JOURNAL_ERRORS as exc:
            log.error("cannot prune the journal %s: %s", journal.path, exc)
            return
        for task_id in pruned:
            task = self.tasks.get(task_id)
            if task is not None and task.finished:
                del self.tasks[task_id]
                self.clients.pop(task_id, None)

    def _journal(self, task: OriginTask) -> None:
        """Write a task's state and its tokens not yet saved (a few, never the whole text). A journal that
        fails is logged and the task goes on: its clients still get every token and their one ending. Tokens
        not saved go with the next write; a final message that cannot be written leaves the task to be marked
        interrupted at the next start (and its output in memory)."""
        journal = self.node.journal
        if journal is None:
            return
        try:
            if task.finished:
                journal.finished(task, task.checkpointed)
            else:
                journal.progress(task, task.checkpointed)
        except JOURNAL_ERRORS as exc:
            log.error("task %s: cannot write to the journal %s: %s", task.task_id, journal.path, exc)
            return
        task.checkpointed = len(task.tokens)
        task.final_written = task.finished

    def _publish_task(self, task: OriginTask, **extra: str) -> None:
        """A task's state change, for dashboards and the journal."""
        self._journal(task)
        if self.node.events.active:
            self.node.publish({"k": "task", "task_id": task.task_id, "state": task.state,
                               "origin": self.node.settings.name, "executor": task.executor_name,
                               "model": task.model, "tokens": len(task.tokens), **extra})

    def _send_final(self, client: bytes, task: OriginTask, final: dict[str, Any] | None = None,
                    re: int | None = None) -> None:
        """A finished task's DONE or ERROR again (`final` when the caller already read it back; `re` when
        it answers a request)."""
        if final is None:
            final = self._output(task)[1]
        if final is None or task.final_type is None:
            raise RuntimeError(f"task {task.task_id} is {task.state} without a final message")
        self.node.reply(client, task.final_type, re=re, final=True, **final)

    def _to_clients(self, task: OriginTask, type_: str, **fields: Any) -> None:
        final = type_ in ("DONE", "ERROR")
        for client in self.clients.get(task.task_id, []):
            self.node.reply(client, type_, final=final, **fields)
        if final:
            for client, ref in self.cancellers.pop(task.task_id, ()):
                self.node.reply(client, type_, re=ref, final=True, **fields)
        listener = self.listeners.get(task.task_id)
        if listener is not None:
            if final:
                del self.listeners[task.task_id]
            listener(type_, fields)

    def client_failed(self, client: bytes, sent: Sent) -> None:
        """A client is gone or stopped reading. A task nobody reads any more is
        stopped: cancelled if its client left, ended with `slow_client` (which the
        client still finds at the end of its backlog, and in the journal) if it
        stopped reading."""
        for task_id, clients in list(self.clients.items()):
            if client not in clients:
                continue
            task = self.tasks.get(task_id)
            alone = clients == [client]
            if task is not None and not task.finished and sent is Sent.FULL:
                text = (f"task {task_id}: the client stopped reading "
                        f"({self.node.settings.send_buffer_bytes / 2**20:g} MiB waiting, send_buffer_mb)")
                if alone:
                    self._end_error(task, "slow_client", text + "; task cancelled")
                else:
                    self.node.reply_error(client, "slow_client", text, task_id=task_id)
            clients.remove(client)
            if task is not None and not task.finished and not clients:
                log.info("task %s: its client is gone, cancelling", task_id)
                task.client_left = True
                self._cancel(task)

    def _forget(self, task_id: str) -> None:
        """Drop a finished task entirely (memory and journal), so its id can start again."""
        self.tasks.pop(task_id, None)
        self.clients.pop(task_id, None)
        self.cancellers.pop(task_id, None)
        if self.node.journal is not None:
            try:
                self.node.journal.forget(task_id)
            except JOURNAL_ERRORS as exc:
                log.error("task %s: cannot drop it from the journal %s: %s", task_id, self.node.journal.path, exc)

    def _forget_old(self) -> None:
        finished = [tid for tid, t in self.tasks.items() if t.finished]
        for task_id in finished[: max(0, len(finished) - FINISHED_KEPT)]:
            del self.tasks[task_id]
            self.clients.pop(task_id, None)
            self.cancellers.pop(task_id, None)


def _reopens(task: OriginTask) -> bool:
    """A SUBMIT of a finished task replays its ending, unless that ending was not the task's own: cancelled only
    because its client went away, or interrupted by this node's crash. Then the client (back, or moved here)
    continues it."""
    if not task.finished:
        return False
    if task.client_left:
        return True
    final = task.final or {}
    return task.final_type == "ERROR" and str(final.get("message", "")).startswith("interrupted")

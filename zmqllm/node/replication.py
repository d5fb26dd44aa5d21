"""Runs without a home node, the I/O half (`core.replica` decides): replicating this node's runs to one live peer
each, holding other nodes' runs, and adopting them when their owner is lost.

Owner side: a run's spec and input, then each finished step's output, then its end go to the run's holder (the
live peer `choose_holder` names) as `REPLICATE` records, each answered by `REPLICATED`. A holder lost, or one
that has forgotten the run, gets everything again from the start. A run that ever had a holder ends only when its
holder confirmed the end: an owner cut off from the mesh waits, and when it hears that a higher epoch exists
(`stale`) it stops the run instead of finishing it a second time.

Holder side: records are kept in memory (`ReplicaStore`). When the owner dies or leaves, the holder first asks
the mesh whether anyone has the run going (an owner that moved the run to another holder meanwhile); if not, it
adopts it under the next epoch: the orchestrator continues it from the outputs held, re-running only the rest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from zmqllm.core.lookup import Lookup
from zmqllm.core.protocol import Message
from zmqllm.core.replica import RECORD_KINDS, Replica, ReplicaStore, choose_holder
from zmqllm.net.transport import Sent

if TYPE_CHECKING:
    from zmqllm.core.tasks import TaskSpec
    from zmqllm.node.run_job import RunJob
    from zmqllm.node.roles import ReplicationHost

log = logging.getLogger(__name__)

DETACHED = "detached task"
"""The `source` of a replica that is a detached task (`submit --detach`), not a workflow run: its `spec` is the
task's SUBMIT fields as JSON, and adopting it runs the task again on the holder under the same id."""


@dataclass
class _Detached:
    """A detached task this node is origin of, and the peer holding its replica."""

    fields: dict[str, Any]
    epoch: int
    holder: str | None = None
    seq: int = 0


class ReplicatedRuns(Protocol):
    """What replication needs of the orchestrator: its runs, and three ways to change their course."""

    jobs: dict[str, RunJob]

    def commit_end(self, job: RunJob) -> None: ...

    def supersede(self, job: RunJob, owner: str) -> None: ...

    def adopt(self, replica: Replica, previous_owner: str) -> None: ...


class Replication:
    """The replication of one node's runs, and the runs it holds for others."""

    def __init__(self, node: ReplicationHost, runs: ReplicatedRuns) -> None:
        self.node = node
        self.runs = runs
        self.store = ReplicaStore()
        self.detached: dict[str, _Detached] = {}
        self.checking: dict[str, list[tuple[bytes, Message]]] = {}
        """Runs whose `start` this node checks with the mesh before holding them, and the records that came
        meanwhile (answered, in order, once the check is done)."""

    # -- detached tasks ---------------------------------------------------------------------

    def detached_started(self, spec: TaskSpec) -> None:
        """A detached task was accepted (or adopted) here: its replica goes to a live peer."""
        epoch = self.store.epoch_of(spec.task_id) or 1
        self.detached[spec.task_id] = _Detached(spec.submit_fields(), epoch)
        self._rehome_detached(spec.task_id)

    def detached_ended(self, task_id: str) -> None:
        """Its result is here now (and in the journal): the holder lets its replica go."""
        entry = self.detached.pop(task_id, None)
        if entry is not None and entry.holder is not None:
            entry.seq += 1
            self.node.send_to_peer(entry.holder, "REPLICATE", run_id=task_id, epoch=entry.epoch, seq=entry.seq,
                                   kind="end")

    def _rehome_detached(self, task_id: str) -> None:
        entry = self.detached[task_id]
        peers = [peer.node_id for peer in self._live_peers()]
        entry.holder = choose_holder(task_id, peers)
        if entry.holder is not None:
            entry.seq += 1
            self.node.send_to_peer(entry.holder, "REPLICATE", run_id=task_id, epoch=entry.epoch, seq=entry.seq,
                                   kind="start", source=DETACHED, spec=json.dumps(entry.fields))

    # -- owner side --------------------------------------------------------------------------

    def started(self, job: RunJob) -> None:
        """A run began (or was adopted) here: give it a holder and send it everything."""
        self._rehome(job)

    def task_done(self, job: RunJob, key: str, text: str, record: dict[str, Any]) -> None:
        if job.holder is not None:
            self._send(job, "task", key=key, text=text, record=record)

    def may_end(self, job: RunJob) -> bool:
        """Whether the run's end may be committed now: yes if it never had a holder and none is to be had;
        otherwise the end goes to the holder and is committed when confirmed (`commit_end`)."""
        if job.holder is None:
            self._rehome(job)
        if job.holder is None and not job.replicated:
            return True
        job.end_seq = self._send(job, "end") if job.holder is not None else None
        return False

    def round(self) -> None:
        """Every heartbeat: runs without a live holder get one; an end not yet confirmed is sent again."""
        for task_id, entry in list(self.detached.items()):
            if entry.holder is None or not self._alive(entry.holder):
                self._rehome_detached(task_id)
        for job in list(self.runs.jobs.values()):
            if not job.going():
                continue
            if job.holder is None or not self._alive(job.holder):
                self._rehome(job)
            elif job.pending_final is not None and job.end_seq is None:
                job.end_seq = self._send(job, "end")
            elif job.pending_final is not None and job.end_seq is not None and job.end_seq > job.acked_seq:
                job.end_seq = self._send(job, "end")

    def on_ack(self, message: Message) -> None:
        """The holder's answer to a record (on this node's link to it: `src` is the holder)."""
        entry = self.detached.get(message["run_id"])
        if entry is not None:
            if message.src == entry.holder and not message["ok"] and not message.get("stale"):
                entry.holder = None  # the next round sends it again
            return
        job = self.runs.jobs.get(message["run_id"])
        if job is None or not job.going() or message.src != job.holder or message["epoch"] != job.epoch:
            return
        if message.get("stale"):
            self.runs.supersede(job, message.get("owner") or message.src)
            return
        if not message["ok"]:
            job.holder = None  # it lacks the run (restarted, became holder midway) or is full: the next round
            return  # sends everything again, at most once a heartbeat (never a refusal ping-pong)
        job.acked_seq = max(job.acked_seq, message["seq"])
        if job.pending_final is not None and job.end_seq is not None and job.acked_seq >= job.end_seq:
            self.runs.commit_end(job)

    def _rehome(self, job: RunJob, force: bool = False) -> None:
        """Choose the run's holder among live peers (keeping a live one unless `force`) and send it the run."""
        peers = [peer.node_id for peer in self._live_peers()]
        holder = job.holder if job.holder in peers and not force else choose_holder(job.run_id, peers)
        if holder is None:
            job.holder = None
            return
        previous, job.holder = job.holder, holder
        if previous is not None and previous != holder:
            self.node.send_to_peer(previous, "REPLICATE", run_id=job.run_id, epoch=job.epoch, seq=self._next(job),
                                   kind="drop")  # a frozen old holder must not adopt the run later
        job.replicated = True
        self._send(job, "start", workflow=job.workflow, source=job.source, spec=job.spec_text, input=job.input_text)
        for key, record in job.records.items():
            self._send(job, "task", key=key, text=job.outputs.get(key, ""), record=record)
        if job.pending_final is not None:
            job.end_seq = self._send(job, "end")

    def _send(self, job: RunJob, kind: str, **fields: Any) -> int | None:
        seq = self._next(job)
        if job.holder is None:
            return None
        sent = self.node.send_to_peer(job.holder, "REPLICATE", run_id=job.run_id, epoch=job.epoch, seq=seq,
                                      kind=kind, **fields)
        return seq if sent is Sent.OK else None

    @staticmethod
    def _next(job: RunJob) -> int:
        job.seq += 1
        return job.seq

    # -- holder side -------------------------------------------------------------------------

    def on_replicate(self, identity: bytes, message: Message) -> None:
        """A record of a run a peer owns. A run this node owns under a higher epoch answers `stale`; one it owns
        under a lower epoch (it was cut off while another adopted it) is stopped here first."""
        run_id, epoch, kind = message["run_id"], message["epoch"], message["kind"]
        if run_id in self.checking:
            self.checking[run_id].append((identity, message))
            return
        if (kind == "start" and run_id not in self.store.replicas and run_id not in self.runs.jobs
                and self.node.table is not None and self.node.forwarder is not None):
            # a run this node never heard of: ask the mesh first whether it was adopted or finished elsewhere (a
            # cut-off owner choosing a new holder must not find one that knows no better, and finish it twice)
            self.checking[run_id] = [(identity, message)]
            self.node.forwarder.search("run", run_id, lambda lookup: self._checked(run_id, lookup),
                                       leave_out=message.src)
            return
        self._take(identity, message)

    def _checked(self, run_id: str, lookup: Lookup) -> None:
        """The mesh answered about a run offered to this node: hold it, or answer every record stale."""
        waiting = self.checking.pop(run_id, [])
        first = waiting[0][1] if waiting else None
        newer = lookup.supersedes(first["epoch"]) if first is not None else None
        for identity, message in waiting:
            if newer is not None:
                peer = self.node.table.get(newer) if self.node.table is not None else None
                log.warning("run %s offered by %s (epoch %d) is held by %s: answering stale", run_id, message.src,
                            message["epoch"], peer.name if peer is not None else newer)
                self._answer(identity, message, ok=False, stale=True, owner=peer.name if peer is not None else newer)
            else:
                self._take(identity, message)

    def _take(self, identity: bytes, message: Message) -> None:
        """Apply one record to the replicas held here and answer it."""
        run_id, epoch, kind = message["run_id"], message["epoch"], message["kind"]
        peer = self.node.table.get(message.src) if self.node.table is not None else None
        owner_name = peer.name if peer is not None else message.src
        mine = self.runs.jobs.get(run_id)
        if mine is not None and mine.superseded_by is None and mine.epoch > epoch:
            self._answer(identity, message, ok=False, stale=True, owner=self.node.settings.name)
            return
        if mine is not None and mine.going() and mine.epoch < epoch:
            self.runs.supersede(mine, owner_name)
        if kind not in RECORD_KINDS:
            self._answer(identity, message, ok=False)
            return
        fields = {name: message.get(name) for name in ("workflow", "source", "spec", "input", "key", "text",
                                                         "record")}
        held = self.store.replicas.get(run_id)
        waiting = list(held.watchers) if held is not None and kind in ("end", "drop") else []
        verdict = self.store.apply(run_id, epoch, kind, fields, message.src, owner_name)
        self._answer(identity, message, ok=verdict.ok, stale=verdict.stale or None, owner=verdict.owner or None)
        if verdict.ok and waiting:  # they waited here for an adoption that will not come: send them to the owner
            if held is not None:
                held.watchers.clear()
            for client in waiting:
                self.node.reply(client, "RUN_EVENT", final=True, run_id=run_id, event={
                    "type": "error", "run_id": run_id, "code": "run_moved", "retryable": True,
                    "message": f"run {run_id} is orchestrated by {owner_name}, which is back: "
                               f"zmqllm run --attach {run_id}"})

    def _answer(self, identity: bytes, message: Message, **fields: Any) -> None:
        self.node.reply(identity, "REPLICATED", re=message.id, run_id=message["run_id"], epoch=message["epoch"],
                        seq=message["seq"], **fields)

    def peer_lost(self, node_id: str) -> None:
        """A peer died or left: runs it held for this node get another holder; runs it owned and this node
        holds are adopted, unless the mesh says one is going elsewhere."""
        for job in list(self.runs.jobs.values()):
            if job.going() and job.holder == node_id:
                self._rehome(job, force=True)
        for task_id, entry in list(self.detached.items()):
            if entry.holder == node_id:
                self._rehome_detached(task_id)
        for replica in self.store.orphaned(node_id):
            log.info("run %s: its orchestrator %s is lost; looking whether another node has it going",
                     replica.run_id, replica.owner_name)
            kind = "task" if replica.source == DETACHED else "run"
            self.node.forwarder.search(kind, replica.run_id, lambda lookup, r=replica: self._adopt_unless_going(
                r, lookup))

    def _adopt_unless_going(self, replica: Replica, lookup: Lookup) -> None:
        if replica.adopted or self.store.replicas.get(replica.run_id) is not replica:
            return
        holder = lookup.holder()
        if holder is not None and lookup.holding_of(holder) == "going":
            log.info("run %s is going on another node: not adopting it", replica.run_id)
            del self.store.replicas[replica.run_id]
            return
        previous = replica.owner_name
        replica.adopted = True
        replica.epoch += 1
        replica.owner_id, replica.owner_name = self.node.node_id, self.node.settings.name  # for fencing answers
        if replica.source == DETACHED:
            try:
                fields = json.loads(replica.spec)
            except ValueError as exc:
                log.error("task %s: its replica from %s does not parse: %s", replica.run_id, previous, exc)
                return
            self.node.origin.adopt_detached(fields, previous)
        else:
            self.runs.adopt(replica, previous)

    def _live_peers(self) -> list[Any]:
        table = self.node.table
        return [peer for peer in table.live_peers() if self.node.link_for(peer.node_id)] if table else []

    def _alive(self, node_id: str) -> bool:
        peer = self.node.table.get(node_id) if self.node.table is not None else None
        return peer is not None and peer.state == "alive"

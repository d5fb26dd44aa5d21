"""Run replication's I/O half (node/replication.py) driven through stand-ins: no sockets, no daemon. A holder
answers records and fences stale owners; an owner stops on a stale answer and never ping-pongs a refusal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conftest import StandInSettings

from zmqllm.core import protocol
from zmqllm.net.transport import Sent
from zmqllm.node.replication import Replication


@dataclass
class Host:
    """Stands in for the node: a lone node (no peer table), recording what it says."""

    node_id: str = "H"
    settings: StandInSettings = field(default_factory=lambda: StandInSettings("h"))
    table: None = None
    forwarder: None = None
    origin: None = None
    replies: list[tuple[bytes, str, dict[str, Any]]] = field(default_factory=list)
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def reply(self, identity: bytes, type_: str, *, re: int | None = None, final: bool = False,
              **fields: Any) -> None:
        self.replies.append((identity, type_, fields))

    def reply_error(self, identity: bytes, code: str, text: str, **kwargs: Any) -> None:
        self.replies.append((identity, "ERROR", {"code": code, "message": text}))

    def link_for(self, node_id: str) -> Any:
        return object()

    def send_to_peer(self, node_id: str, type_: str, **fields: Any) -> Sent:
        self.sent.append((node_id, type_, fields))
        return Sent.OK


@dataclass
class Runs:
    jobs: dict[str, Any] = field(default_factory=dict)
    superseded: list[tuple[str, str]] = field(default_factory=list)

    def commit_end(self, job: Any) -> None: ...

    def supersede(self, job: Any, owner: str) -> None:
        self.superseded.append((job.run_id, owner))

    def adopt(self, replica: Any, previous_owner: str) -> None: ...


def record(src: str, seq: int, kind: str, epoch: int = 1, **fields: Any) -> protocol.Message:
    return protocol.make("REPLICATE", src=src, id=seq, run_id="r1", epoch=epoch, seq=seq, kind=kind, **fields)


def test_clients_waiting_at_a_replica_are_sent_to_the_owner_when_the_run_ends_there() -> None:
    """A client that re-attached while the owner only seemed lost waits at the holder for an adoption; when the
    owner (back) ends the run, the client is told where the run is instead of waiting forever."""
    host = Host()
    replication = Replication(host, Runs())
    replication.on_replicate(b"A", record("A", 1, "start", spec="name = 'x'", input="in", workflow="x"))
    replication.store.replicas["r1"].watchers.append(b"client")
    replication.on_replicate(b"A", record("A", 2, "end"))
    told = [fields for who, kind, fields in host.replies if who == b"client" and kind == "RUN_EVENT"]
    assert len(told) == 1 and told[0]["event"]["type"] == "error" and told[0]["event"]["retryable"]
    assert "orchestrated by A" in told[0]["event"]["message"]
    acks = [fields for who, kind, fields in host.replies if who == b"A" and kind == "REPLICATED"]
    assert [ack["ok"] for ack in acks] == [True, True]


def test_an_older_epoch_is_answered_stale_naming_the_owner() -> None:
    host = Host()
    replication = Replication(host, Runs())
    replication.on_replicate(b"B", record("B", 1, "start", epoch=2, spec="s", input="", workflow="x"))
    replication.on_replicate(b"A", record("A", 5, "task", epoch=1, key="k", text="t", record={}))
    [(who, kind, answer)] = host.replies[-1:]
    assert who == b"A" and kind == "REPLICATED" and not answer["ok"] and answer["stale"] and answer["owner"] == "B"


def test_an_owner_stops_on_stale_and_waits_a_round_after_a_refusal() -> None:
    from zmqllm.node.run_job import RunJob

    host, runs = Host(), Runs()
    replication = Replication(host, runs)
    job = RunJob("r1", "x", run=None, holder="B")  # type: ignore[arg-type]
    runs.jobs["r1"] = job
    refused = protocol.make("REPLICATED", src="B", id=9, re=1, run_id="r1", epoch=1, seq=1, ok=False)
    replication.on_ack(refused)
    assert job.holder is None and host.sent == []  # nothing resent at once: the next round does it
    job.holder = "B"
    stale = protocol.make("REPLICATED", src="B", id=10, re=2, run_id="r1", epoch=1, seq=2, ok=False, stale=True,
                          owner="b")
    replication.on_ack(stale)
    assert runs.superseded == [("r1", "b")]
    forged = protocol.make("REPLICATED", src="M", id=11, re=3, run_id="r1", epoch=1, seq=3, ok=False, stale=True,
                           owner="m")
    replication.on_ack(forged)  # not from the run's holder: ignored
    assert runs.superseded == [("r1", "b")]

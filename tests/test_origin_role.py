"""The origin's role driven through its narrow interface (`OriginHost`): a stand-in host with a peer table of
two executors, no sockets. Placement, failover mid-stream, cancel and a slow client, in milliseconds."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from conftest import StandInSettings

from zmqllm.core import protocol
from zmqllm.core.events import EventHub
from zmqllm.core.metrics import NodeStats
from zmqllm.core.membership import Identity, Liveness, Load, PeerTable
from zmqllm.engines.echo import EchoEngine
from zmqllm.net.transport import Sent
from zmqllm.node.executor import Executor
from zmqllm.node.origin import Origin

CLIENT = b"client-1"


@dataclass
class Host:
    """Stands in for node a, which serves no model itself: every task goes to peer b or c."""

    settings: StandInSettings = field(default_factory=StandInSettings)
    node_id: str = "id-a"
    journal: None = None
    events: EventHub = field(default_factory=EventHub)
    stats: NodeStats = field(default_factory=NodeStats)
    now: float = 100.0
    to_clients: list[tuple[bytes, str, dict[str, Any]]] = field(default_factory=list)
    to_peers: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.executor = Executor(EchoEngine(), queue_limit=4)
        me = Identity(self.node_id, "a", "tcp://127.0.0.1:1", ("other",), 1)
        self.table = PeerTable(me, Liveness(), self.now)
        for name, port in (("b", 2), ("c", 3)):
            self.table.observe(Identity(f"id-{name}", name, f"tcp://127.0.0.1:{port}", ("echo",), 1), self.now,
                               Load(slots=1))

    def clock(self) -> float:
        return self.now

    def identity(self) -> Identity:
        return self.table.me

    def load(self) -> Load:
        return Load(slots=1)

    def reply(self, identity: bytes, type_: str, *, re: int | None = None, final: bool = False,
              **fields: Any) -> None:
        self.to_clients.append((identity, type_, fields))

    def reply_error(self, identity: bytes, code: str, text: str, *, re: int | None = None,
                    task_id: str | None = None, retryable: bool = False) -> None:
        self.reply(identity, "ERROR", code=code, message=text, task_id=task_id, retryable=retryable)

    def send_to_peer(self, node_id: str, type_: str, **fields: Any) -> Sent:
        self.to_peers.append((node_id, type_, fields))
        return Sent.OK

    def publish(self, event: dict[str, Any]) -> None:
        pass

    def client_types(self) -> list[str]:
        return [type_ for _, type_, _ in self.to_clients]

    def from_executor(self, origin: Origin, node_id: str, type_: str, **fields: Any) -> None:
        origin.on_executor_message(protocol.make(type_, src=node_id, id=next(self.ids), **fields))


def submit(origin: Origin, task_id: str, **extra: Any) -> None:
    origin.on_submit(CLIENT, protocol.make("SUBMIT", src="client", id=1, task_id=task_id, prompt="one two",
                                           max_tokens=10, params={}, stop=[], model="echo", **extra))


def test_two_tasks_go_to_the_two_idle_executors() -> None:
    host = Host()
    origin = Origin(host)
    submit(origin, "t1")
    submit(origin, "t2")
    assigned = [(node_id, fields["task_id"]) for node_id, type_, fields in host.to_peers if type_ == "ASSIGN"]
    assert sorted(node for node, _ in assigned) == ["id-b", "id-c"]


def test_an_executor_lost_mid_stream_moves_the_task_with_what_was_delivered() -> None:
    host = Host()
    origin = Origin(host)
    submit(origin, "t")
    first, _, _ = host.to_peers[-1]
    other = "id-c" if first == "id-b" else "id-b"
    for seq, token in enumerate([11, 12, 13]):
        host.from_executor(origin, first, "TOKEN", task_id="t", seq=seq, text=f"w{seq} ", ids=[token])
    host.from_executor(origin, other, "TOKEN", task_id="t", seq=3, text="forged ", ids=[99])  # not its task
    origin.executor_lost(first, first[3:], "dead")
    node_id, type_, fields = host.to_peers[-1]
    assert (node_id, type_) == (other, "ASSIGN")
    assert fields["resume_ids"] == [11, 12, 13] and fields["start_seq"] == 3
    failover = [f for _, t, f in host.to_clients if t == "FAILOVER"]
    assert failover and failover[0]["at_seq"] == 3 and failover[0]["to"] == other[3:]
    assert host.client_types().count("TOKEN") == 3  # the forged token was not relayed


def test_a_cancel_reaches_the_executor_and_its_done_reaches_the_client() -> None:
    host = Host()
    origin = Origin(host)
    submit(origin, "t")
    executor, _, _ = host.to_peers[-1]
    assert origin.on_cancel(CLIENT, protocol.make("CANCEL", src="client", id=2, task_id="t"))
    assert host.to_peers[-1][:2] == (executor, "CANCEL")
    host.from_executor(origin, executor, "DONE", task_id="t", finish_reason="cancelled",
                       usage={"prompt_tokens": 2, "completion_tokens": 0}, timings={}, executed_by=executor[3:],
                       executed_on=[executor[3:]])
    done = [f for _, t, f in host.to_clients if t == "DONE"]
    assert done and done[0]["finish_reason"] == "cancelled"


def test_a_client_that_stops_reading_ends_its_task_slow_client_and_stops_the_executor() -> None:
    host = Host()
    origin = Origin(host)
    submit(origin, "t")
    executor, _, _ = host.to_peers[-1]
    origin.client_failed(CLIENT, Sent.FULL)
    errors = [f for _, t, f in host.to_clients if t == "ERROR"]
    assert errors and errors[0]["code"] == "slow_client"
    assert host.to_peers[-1][:2] == (executor, "CANCEL")


def test_the_origin_counts_tokens_gaps_failovers_and_outcomes_for_metrics() -> None:
    host = Host()
    origin = Origin(host)
    submit(origin, "t")
    first, _, _ = host.to_peers[-1]
    other = "id-c" if first == "id-b" else "id-b"
    for seq in range(3):
        host.now += 0.5
        host.from_executor(origin, first, "TOKEN", task_id="t", seq=seq, text=f"w{seq} ", ids=[seq])
    origin.executor_lost(first, first[3:], "dead")
    host.now += 0.25
    host.from_executor(origin, other, "TOKEN", task_id="t", seq=3, text="w3 ", ids=[3])
    host.from_executor(origin, other, "DONE", task_id="t", finish_reason="length",
                       usage={"prompt_tokens": 2, "completion_tokens": 4}, timings={}, executed_by=other[3:],
                       executed_on=[first[3:], other[3:]])
    stats = host.stats
    assert (stats.first_token_s.count, stats.first_token_s.total) == (1, 0.5)
    assert (stats.token_gap_s.count, stats.token_gap_s.total) == (3, 1.25)
    assert (stats.failovers, stats.resumed_tokens) == (1, 3)
    assert stats.tasks == {"length": 1} and stats.generated_tokens == {"echo": 4}
    origin.on_submit(CLIENT, protocol.make("SUBMIT", src="client", id=1, task_id="nowhere", prompt="x", max_tokens=1,
                                           params={}, stop=[], model="no-such-model"))  # refused: counted by its code, not by the model asked
    assert stats.tasks["no_peer_for_model"] == 1 and "no-such-model" not in stats.prompt_tokens

"""The executor's role (`RemoteTasks`) driven through its narrow interface: a stand-in host, a real executor on
the echo engine, no sockets, no daemon. Each origin names its own tasks; a cancel, a lost origin and a slow
one each stop exactly their own work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conftest import StandInSettings, until

from zmqllm.core import protocol
from zmqllm.engines.echo import EchoEngine
from zmqllm.net.transport import Sent
from zmqllm.node.executor import Executor
from zmqllm.node.remote import RemoteTasks


@dataclass
class Host:
    """Stands in for the node: records every reply by receiver."""

    engine: EchoEngine = field(default_factory=lambda: EchoEngine(rate=200, slots=4))
    settings: StandInSettings = field(default_factory=lambda: StandInSettings("c"))
    sent: list[tuple[bytes, str, dict[str, Any]]] = field(default_factory=list)
    executor: Executor = field(init=False)

    def __post_init__(self) -> None:
        self.executor = Executor(self.engine, queue_limit=4)

    def reply(self, identity: bytes, type_: str, *, re: int | None = None, final: bool = False,
              **fields: Any) -> None:
        self.sent.append((identity, type_, fields))

    def reply_error(self, identity: bytes, code: str, text: str, *, re: int | None = None,
                    task_id: str | None = None, retryable: bool = False) -> None:
        self.sent.append((identity, "ERROR", {"code": code, "message": text, "task_id": task_id}))

    def ends(self, identity: bytes) -> list[tuple[str, dict[str, Any]]]:
        return [(t, f) for i, t, f in self.sent if i == identity and t in ("DONE", "ERROR")]


def assign(origin_id: str, task_id: str, max_tokens: int = 20, **extra: Any) -> protocol.Message:
    return protocol.make("ASSIGN", src=origin_id, id=1, task_id=task_id, prompt="one two three",
                         max_tokens=max_tokens, params={}, stop=[], model="echo", origin=origin_id, **extra)


def cancel(origin_id: str, task_id: str) -> protocol.Message:
    return protocol.make("CANCEL", src=origin_id, id=2, task_id=task_id)


async def test_two_origins_may_use_one_task_id_and_each_cancels_only_its_own() -> None:
    host = Host()
    remote = RemoteTasks(host)
    remote.on_assign(b"A", assign("A", "same"))
    remote.on_assign(b"B", assign("B", "same"))
    assert len(remote.jobs) == 2
    assert remote.on_cancel(cancel("B", "same"))
    assert not remote.on_cancel(cancel("Z", "same"))  # a third party's cancel reaches nothing
    await until(lambda: host.ends(b"A") and host.ends(b"B"))
    assert host.ends(b"B")[0][1]["finish_reason"] == "cancelled"
    assert host.ends(b"A")[0][1]["finish_reason"] == "length"
    await host.executor.close()


async def test_a_lost_origin_stops_only_its_tasks_and_a_slow_one_is_told_why() -> None:
    host = Host()
    remote = RemoteTasks(host)
    for origin in ("A", "B", "C"):
        remote.on_assign(origin.encode(), assign(origin, "t", max_tokens=1000))
    await until(lambda: host.executor.active == 3)
    remote.origin_lost("A")  # died or left: nobody reads its tokens
    remote.origin_failed(b"B", Sent.FULL)  # stopped reading
    await until(lambda: host.executor.active == 1)
    assert [key for key in remote.jobs] == [("C", "t")]
    assert host.ends(b"B") == [("ERROR", {"code": "slow_client", "task_id": "t",
                                          "message": "c: origin stopped reading the task's tokens"})]
    # told even so (it may only have been silent): it moves the task elsewhere instead of waiting forever
    [(kind, told)] = host.ends(b"A")
    assert kind == "ERROR" and told["code"] == "peer_dead" and told["task_id"] == "t"
    assert told["message"].startswith("c stopped the task after") and "origin fell silent" in told["message"]
    await host.executor.close()


async def test_a_resent_assign_is_accepted_again_without_a_second_run() -> None:
    host = Host()
    remote = RemoteTasks(host)
    remote.on_assign(b"A", assign("A", "t"))
    remote.on_assign(b"A", assign("A", "t"))
    assert [t for _, t, _ in host.sent].count("ACCEPT") == 2 and host.executor.active + host.executor.queued == 1
    await until(lambda: host.ends(b"A"))
    await host.executor.close()

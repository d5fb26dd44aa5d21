"""The orchestrator's role driven through its narrow interface (`OrchestratorHost`): a stand-in origin that
records the steps it is given and lets the test end them. No sockets, no daemon, no engine runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import StandInSettings, until

from zmqllm.core import protocol
from zmqllm.core.tasks import OriginTask, TaskSpec
from zmqllm.engines.echo import EchoEngine
from zmqllm.node.orchestrator import Orchestrator

ENSEMBLE = Path(__file__).parent.parent / "configs" / "workflows" / "ensemble.toml"
CLIENT = b"client-1"


@dataclass
class LocalTasks:
    """Stands in for the origin: every step submitted is kept with its listener; cancels are recorded."""

    tasks: dict[str, OriginTask] = field(default_factory=dict)
    started: list[tuple[TaskSpec, Any, tuple[str, ...]]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def submit_local(self, spec: TaskSpec, listener: Any, avoid: Any = ()) -> str | None:
        self.started.append((spec, listener, tuple(avoid)))
        return None

    def cancel(self, task_id: str) -> None:
        self.cancelled.append(task_id)
        for spec, listener, _ in self.started:
            if spec.task_id == task_id:
                listener("DONE", {"task_id": task_id, "finish_reason": "cancelled"})


@dataclass
class Host:
    settings: StandInSettings = field(default_factory=StandInSettings)
    engine: EchoEngine = field(default_factory=EchoEngine)
    journal: None = None
    table: None = None  # a node alone: its runs have no replica holder
    origin: LocalTasks = field(default_factory=LocalTasks)
    events: list[dict[str, Any]] = field(default_factory=list)

    def reply(self, identity: bytes, type_: str, *, re: int | None = None, final: bool = False,
              **fields: Any) -> None:
        if type_ == "RUN_EVENT":
            self.events.append(fields["event"])

    def reply_error(self, identity: bytes, code: str, text: str, *, re: int | None = None,
                    task_id: str | None = None, retryable: bool = False) -> None:
        self.events.append({"type": "error", "code": code, "message": text})


def run_message(run_id: str) -> protocol.Message:
    return protocol.make("RUN", src="client", id=1, run_id=run_id, spec=ENSEMBLE.read_text(),
                         source="ensemble.toml", input="What is the largest planet?")


def finish(host: Host, index: int, text: str, peer: str) -> None:
    spec, listener, _ = host.origin.started[index]
    listener("DONE", {"task_id": spec.task_id, "finish_reason": "stop", "text": text, "executed_by": peer,
                      "executed_on": [peer], "timings": {}})


async def test_a_fan_out_goes_to_three_steps_and_the_vote_is_the_runs_output() -> None:
    host = Host()
    orchestrator = Orchestrator(host)
    orchestrator.on_run(CLIENT, run_message("r1"))
    await until(lambda: len(host.origin.started) == 3)
    assert len({spec.params["seed"] for spec, _, _ in host.origin.started}) == 3  # one seed per branch
    for index, (text, peer) in enumerate([(" Jupiter", "b"), (" Saturn", "c"), (" Jupiter", "a")]):
        finish(host, index, text, peer)
    await until(lambda: any(event["type"] == "done" for event in host.events))
    done = next(event for event in host.events if event["type"] == "done")
    assert done["output"].strip() == "Jupiter"


async def test_cancelling_a_run_cancels_its_running_steps_and_ends_it() -> None:
    """A step that ends at once when cancelled (queued on this node's executor) used to break the loop over the
    running steps (dictionary changed size): the run's other steps were never cancelled."""
    host = Host()
    orchestrator = Orchestrator(host)
    orchestrator.on_run(CLIENT, run_message("r2"))
    await until(lambda: len(host.origin.started) == 3)
    orchestrator.on_cancel(CLIENT, protocol.make("CANCEL_RUN", src="client", id=2, run_id="r2"))
    await until(lambda: any(event["type"] in ("done", "error", "cancelled") for event in host.events
                            if event.get("type") != "task"))
    assert sorted(host.origin.cancelled) == sorted(spec.task_id for spec, _, _ in host.origin.started)

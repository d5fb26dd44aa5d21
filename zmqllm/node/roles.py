"""What each role of a node (origin, remote, orchestrator) may use of the node: narrow interfaces.

The roles never see the whole `Node`: each names the few members it needs, so a reader knows what a role
can touch, and a test can drive a role with a small stand-in instead of sockets and a running daemon.
`Node` satisfies all three structurally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zmqllm.core.metrics import NodeStats
from zmqllm.core.membership import Identity, Load, PeerTable, Transition
from zmqllm.core.protocol import Message
from zmqllm.core.events import EventHub
from zmqllm.core.tasks import OriginTask, TaskSpec
from zmqllm.engines.base import Engine
from zmqllm.net.keys import MeshKey
from zmqllm.net.transport import Sent

if TYPE_CHECKING:
    import zmq

    from zmqllm.node.executor import Executor
    from zmqllm.node.journal import Journal


class RoleSettings(Protocol):
    """The node settings a role reads."""

    name: str
    send_buffer_bytes: int
    data_dir: Path | None
    mesh_key: MeshKey | None


class Replies(Protocol):
    """Answering on the node's ROUTER: to a client, or to the peer DEALER a message came from."""

    settings: RoleSettings

    def reply(self, identity: bytes, type_: str, *, re: int | None = None, final: bool = False,
              **fields: Any) -> None: ...

    def reply_error(self, identity: bytes, code: str, text: str, *, re: int | None = None,
                    task_id: str | None = None, retryable: bool = False) -> None: ...


class RemoteHost(Replies, Protocol):
    """What running another origin's task here needs: the engine's names and the executor."""

    engine: Engine
    executor: Executor


class OriginHost(Replies, Protocol):
    """What an origin needs: placement inputs (the table, its own identity and load), the executor, a peer
    link, the journal, the clock, and the dashboards' trace."""

    node_id: str
    table: PeerTable | None
    executor: Executor
    journal: Journal | None
    events: EventHub
    stats: NodeStats
    clock: Callable[[], float]
    orchestrator: Any
    """Its `replication` holds detached tasks' replicas too."""

    def identity(self) -> Identity: ...

    def load(self) -> Load: ...

    def send_to_peer(self, node_id: str, type_: str, **fields: Any) -> Sent: ...

    def publish(self, event: dict[str, Any]) -> None: ...


class LocalTasks(Protocol):
    """What an orchestrator may do with the node's origin: start a step as a task, watch it, cancel it."""

    tasks: Mapping[str, OriginTask]

    def submit_local(self, spec: TaskSpec, listener: Callable[[str, dict[str, Any]], None],
                     avoid: Iterable[str] = ()) -> str | None: ...

    def cancel(self, task_id: str) -> None: ...


class ReplicationHost(Replies, Protocol):
    """What replicating runs needs: the live peers, a word to each, and a search of the mesh (`forwarder`)."""

    node_id: str
    table: PeerTable | None
    forwarder: Any
    origin: Any

    def link_for(self, node_id: str) -> Any: ...

    def send_to_peer(self, node_id: str, type_: str, **fields: Any) -> Sent: ...


class OrchestratorHost(ReplicationHost, Protocol):
    """What a workflow orchestrator needs: the origin (its steps are tasks), the journal, the engine's
    token counter, and what replicating its runs needs."""

    engine: Engine
    journal: Journal | None
    origin: LocalTasks


class ForwardHost(Replies, Protocol):
    """What forwarding a request to the node holding its task or run needs: the table of live peers, a word
    to each, and the context to open a client socket of its own."""

    node_id: str
    table: PeerTable | None
    ctx: zmq.Context

    def link_for(self, node_id: str) -> Any: ...

    def send_to_peer(self, node_id: str, type_: str, **fields: Any) -> Sent: ...


class SwimHost(Replies, Protocol):
    """What SWIM in the daemon needs (node/swim_membership.py): the links it opens and closes, the table it
    keeps, the node's own identity and load for its metadata, and the executors the origin has tasks on (their
    links stay open)."""

    node_id: str
    endpoint: str
    table: PeerTable | None
    links: dict[str, Any]
    origin: Any
    clock: Callable[[], float]
    dropped_frames: int

    def identity(self) -> Identity: ...

    def load(self) -> Load: ...

    def message(self, type_: str, *, re: int | None = None, **fields: Any) -> Message: ...

    def dial(self, endpoint: str, seed: bool = False) -> Any: ...

    def send_on_link(self, link: Any, type_: str, payload: bytes, task_id: str | None = None) -> Sent: ...

    def close_link(self, link: Any, why: str, linger_ms: int = 0) -> None: ...

    def observe_identity(self, identity: Identity, load: Load | None) -> None: ...

    def on_transition(self, change: Transition) -> None: ...

    def say_quietly(self, identity: bytes | str, what: str) -> None: ...

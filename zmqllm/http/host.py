"""What the gateway sees of its node: the narrow interface `node/daemon.py` implements (as `node/roles.py` does
for the node's roles), so the gateway is tested and reasoned about without the node's sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from zmqllm.core.tasks import TaskSpec

TaskListener = Callable[[str, dict[str, Any]], None]
"""Called on the loop with each message of a task: TOKEN, FAILOVER, then one DONE or ERROR (CONTRACT)."""


class Mesh(Protocol):
    """The node a gateway fronts."""

    @property
    def name(self) -> str:
        """This node's name (responses say which node answered)."""

    def models(self) -> dict[str, list[str]]:
        """Every model a live node of the mesh serves (this one included), with those nodes' names."""

    def submit(self, spec: TaskSpec, listener: TaskListener) -> str | None:
        """Originate a task here, routed, failed over and journaled like a client's SUBMIT; returns why it
        cannot run, or None once accepted (then `listener` hears its every message)."""

    def cancel(self, task_id: str) -> None:
        """Stop a task submitted here; it ends DONE with finish_reason `cancelled`."""

    def executor_of(self, task_id: str) -> str | None:
        """The name of the node running a task submitted here now (None before it is placed)."""

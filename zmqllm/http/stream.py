"""One task from the gateway's side: submitted to the mesh, its messages read in order, cancelled if the
HTTP client goes away first."""

from __future__ import annotations

import asyncio
from typing import Any

from zmqllm.core.tasks import TaskSpec
from zmqllm.http.errors import ApiError
from zmqllm.http.host import Mesh

FINAL = ("DONE", "ERROR")


class TaskRun:
    """A submitted task's messages as they come. The origin calls the listener on this loop, so a plain
    unbounded queue is enough: it holds at most max_tokens + 2 messages, and a stalled HTTP client is the
    transport's to bound."""

    def __init__(self, mesh: Mesh, spec: TaskSpec) -> None:
        self.mesh = mesh
        self.task_id = spec.task_id
        self.finished = False
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        problem = mesh.submit(spec, self._listen)
        if problem is not None:  # the request was checked already: what is left is the node's (its journal)
            self.finished = True
            raise ApiError(500, problem, code="internal")

    def _listen(self, type_: str, fields: dict[str, Any]) -> None:
        self._queue.put_nowait((type_, fields))

    async def next_batch(self) -> list[tuple[str, dict[str, Any]]]:
        """The next message and every one already waiting (one write per loop turn, not per token)."""
        batch = [await self._queue.get()]
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if batch[-1][0] in FINAL:
            self.finished = True
        return batch

    def cancel(self) -> None:
        """Stop the task unless it ended (its HTTP client left, or the handler failed)."""
        if not self.finished:
            self.finished = True
            self.mesh.cancel(self.task_id)

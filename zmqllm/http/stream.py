"""A request's tasks from the gateway's side: submitted to the mesh, their messages read in order, cancelled if
the HTTP client goes away first. One task per choice (OpenAI's `n`), so `n` answers run on as many slots."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from zmqllm.core.tasks import TaskSpec
from zmqllm.http.errors import ApiError
from zmqllm.http.host import Mesh

FINAL = ("DONE", "ERROR")
Message = tuple[int, str, dict[str, Any]]
"""(choice index, message type, fields)."""


class TaskRuns:
    """The submitted tasks' messages as they come, tagged with their choice. The origin calls the listeners on
    this loop, so a plain unbounded queue is enough: it holds at most n × (max_tokens + 2) messages, and a
    stalled HTTP client is the transport's to bound."""

    def __init__(self, mesh: Mesh, specs: Sequence[TaskSpec]) -> None:
        self.mesh = mesh
        self.task_ids = [spec.task_id for spec in specs]
        self._open = set(range(len(specs)))
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        for index, spec in enumerate(specs):
            problem = mesh.submit(spec, self._listener(index))
            if problem is not None:  # the request was checked already: what is left is the node's (its journal)
                self.cancel()
                raise ApiError(500, problem, code="internal")

    @property
    def count(self) -> int:
        return len(self.task_ids)

    @property
    def finished(self) -> bool:
        return not self._open

    def _listener(self, index: int):
        def listen(type_: str, fields: dict[str, Any]) -> None:
            self._queue.put_nowait((index, type_, fields))
        return listen

    async def next_batch(self) -> list[Message]:
        """The next message and every one already waiting (one write per loop turn, not per token)."""
        batch = [await self._queue.get()]
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        for index, type_, _ in batch:
            if type_ in FINAL:
                self._open.discard(index)
        return batch

    def executor(self) -> str | None:
        """The node running the first choice now (None before it is placed)."""
        return self.mesh.executor_of(self.task_ids[0])

    def cancel(self) -> None:
        """Stop every task not ended yet (its HTTP client left, or the request failed)."""
        for index in sorted(self._open):
            self.mesh.cancel(self.task_ids[index])
        self._open.clear()

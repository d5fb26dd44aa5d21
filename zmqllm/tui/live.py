"""The live feed: poll one node for the peer list, subscribe to every live peer.

Each node reports only its own traffic, so one subscription cannot show the
edges between two other nodes: the feed keeps one `AsyncClient` (one DEALER) per
node and one subscription task per live peer, started and retired as the peer
list changes. Everything arriving is folded into the `MeshState` at once
(constant work); nothing here touches a widget, so the app can repaint on its
own clock. Losing the connected node sets `state.link_error` (the banner) and
the feed keeps retrying it — and any other peer it knew to be alive — until one
answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import zmq

from zmqllm.client import AsyncClient, MeshUnreachable, RequestFailed
from zmqllm.tui.inject import InjectRequest
from zmqllm.tui.recording import Recorder
from zmqllm.tui.state import MeshState

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
"""How often the connected node is asked for the peer list."""
RETRY_S = 1.0
"""Wait before retrying a node that did not answer, or a subscription that ended."""
REQUEST_TIMEOUT_S = 2.0
"""How long a node may take to answer before it counts as unreachable."""
FOLD_SLICE = 1_000
"""Events folded between two yields to the loop (~1 ms of work)."""
LIVE_STATES = ("alive", "suspect")
"""Peers in these states get a subscription; dead and left ones are let go."""
_LINK_ERRORS = (MeshUnreachable, RequestFailed, OSError, zmq.ZMQError)


async def fold_batch(state: MeshState, batch: dict[str, Any]) -> None:
    """Fold a batch in slices, yielding after each: a full batch (5 000 events) would otherwise hold the
    loop for ~5 ms, and a queued batch comes out of subscribe() without yielding at all. (Public so
    `zmqllm bench dash` times the same path.)"""
    events = batch.get("events") or []
    for start in range(0, max(1, len(events)), FOLD_SLICE):
        state.apply_batch({"node": batch.get("node"), "events": events[start:start + FOLD_SLICE],
                           "dropped": batch.get("dropped", 0) if start == 0 else 0})
        await asyncio.sleep(0)


class LiveSource:
    """Feeds a MeshState from a running mesh reached through `connect`."""

    def __init__(self, connect: str, state: MeshState, *, recorder: Recorder | None = None,
                 timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.connect = connect
        self.state = state
        self.recorder = recorder
        self.timeout = timeout
        self._clients: dict[str, AsyncClient] = {}
        self._subscriptions: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._target = connect
        self._poller: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def description(self) -> str:
        return f"{self._target} · {len(self._subscriptions)} subscribed"

    def start(self) -> None:
        """Start polling (on the running loop: call from the app's on_mount)."""
        self._poller = asyncio.create_task(self._poll_loop(), name="dash-poll")

    async def stop(self) -> None:
        """Cancel every task first (they use the sockets), then close the sockets."""
        tasks = [task for _, task in self._subscriptions.values()] + list(self._retiring)
        if self._poller is not None:
            tasks.append(self._poller)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subscriptions.clear()
        self._retiring.clear()
        self._poller = None
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        if self.recorder is not None:
            self.recorder.close()

    async def submit(self, request: InjectRequest) -> AsyncIterator[dict[str, Any]]:
        """Run a task through the connected node; its events as `AsyncClient.submit` yields them."""
        client = await self._client(self._target)
        async for event in client.submit(request.prompt, model=request.model, peer=request.peer,
                                         max_tokens=request.max_tokens, params=request.params()):
            yield event

    async def run_workflow(self, request: InjectRequest) -> AsyncIterator[dict[str, Any]]:
        """Run the request's workflow file, its prompt as the input, with the connected node orchestrating."""
        if request.workflow is None:
            raise ValueError("no workflow file in this request")
        spec = Path(request.workflow).read_text(encoding="utf-8")
        client = await self._client(self._target)
        async for event in client.run(spec, request.prompt, source=Path(request.workflow).name):
            yield event

    async def cancel(self, task_id: str, origin: str) -> None:
        """Cancel through the task's origin (the node that accepted it)."""
        peer = self.state.peers.get(origin)
        endpoint = self._target if peer is None or peer.is_self or not peer.endpoint else peer.endpoint
        await (await self._client(endpoint)).cancel(task_id)

    # -- polling ---------------------------------------------------------------------------

    async def _client(self, endpoint: str) -> AsyncClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = AsyncClient(endpoint, self.timeout)
            await client.__aenter__()
            self._clients[endpoint] = client
        return client

    async def _poll_loop(self) -> None:
        fallbacks: list[str] = []
        while True:
            try:
                rows = await (await self._client(self._target)).peers()
            except _LINK_ERRORS as exc:
                reason = f"no answer within {self.timeout:g} s" if isinstance(exc, MeshUnreachable) else str(exc)
                self.state.link_error = f"cannot reach {self._target} ({reason}); retrying every {RETRY_S:g} s"
                fallbacks = fallbacks or self._alive_endpoints()
                self._target = fallbacks.pop(0) if fallbacks else self.connect
                await asyncio.sleep(RETRY_S)
                continue
            except Exception as exc:  # a bug here must not end the feed silently
                log.exception("peer poll failed")
                self.state.link_error = f"internal error polling {self._target}: {exc!r}"
                await asyncio.sleep(RETRY_S)
                continue
            fallbacks = []
            self.state.link_error = None
            self.state.apply_peers(rows)
            if self.recorder is not None:
                self.recorder.peers(rows)
            self._sync_subscriptions(rows)
            await asyncio.sleep(POLL_INTERVAL_S)

    def _alive_endpoints(self) -> list[str]:
        """Where else to look when the connected node is gone: the others last seen alive, then `connect`."""
        others = [p.endpoint for p in sorted(self.state.peers.values(), key=lambda p: p.name)
                  if p.state in LIVE_STATES and p.endpoint and p.endpoint != self._target]
        return [*others, self.connect] if self._target != self.connect else others

    def _sync_subscriptions(self, rows: list[dict[str, Any]]) -> None:
        """One subscription per live peer, at the endpoint the peer list gives; none for unlisted ones."""
        listed = {row.get("name") for row in rows}
        for unlisted in [name for name in self._subscriptions if name not in listed]:
            self._retire_subscription(unlisted)
        for row in rows:
            name = row.get("name")
            if not isinstance(name, str):
                continue
            endpoint = self._target if row.get("self") else str(row.get("endpoint", ""))
            current = self._subscriptions.get(name)
            wanted = row.get("state") in LIVE_STATES and bool(endpoint)
            if current is not None and (not wanted or current[0] != endpoint):
                self._retire_subscription(name)
                current = None
            if wanted and current is None:
                task = asyncio.create_task(self._subscribe_loop(name, endpoint), name=f"dash-sub-{name}")
                self._subscriptions[name] = (endpoint, task)

    def _retire_subscription(self, name: str) -> None:
        retiring = asyncio.create_task(self._retire(*self._subscriptions.pop(name)))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    async def _retire(self, endpoint: str, task: asyncio.Task[None]) -> None:
        """End a dead peer's subscription, then close its socket unless something else still uses it."""
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        in_use = endpoint == self._target or any(ep == endpoint for ep, _ in self._subscriptions.values())
        client = None if in_use else self._clients.pop(endpoint, None)
        if client is not None:
            await client.close()

    async def _subscribe_loop(self, name: str, endpoint: str) -> None:
        while True:
            try:
                client = await self._client(endpoint)
                async for batch in client.subscribe():
                    if self.recorder is not None:
                        self.recorder.batch(batch)
                    await fold_batch(self.state, batch)
            except _LINK_ERRORS as exc:
                log.info("subscription to %s (%s) ended: %s", name, endpoint, exc)
            except Exception:
                log.exception("subscription to %s failed", name)
            await asyncio.sleep(RETRY_S)


"""The gateway against a scripted stand-in mesh (`zmqllm.http.host.Mesh`), served by aiohttp on a real local
socket: the orderings a real mesh makes rare (an error mid-stream, a refusal before the first token, no model
anywhere), in milliseconds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from zmqllm.core.tasks import TaskSpec
from zmqllm.http.server import MAX_BODY_BYTES, Gateway

Script = list[tuple[str, dict[str, Any]]]


class StandInMesh:
    """Serves `served`; each submitted task plays `script` (messages sent one loop turn apart)."""

    name = "solo"

    def __init__(self, served: dict[str, list[str]], script: Script) -> None:
        self.served = served
        self.script = script
        self.specs: list[TaskSpec] = []
        self.cancelled: list[str] = []

    def models(self) -> dict[str, list[str]]:
        return self.served

    def submit(self, spec: TaskSpec, listener: Callable[[str, dict[str, Any]], None]) -> str | None:
        self.specs.append(spec)
        loop = asyncio.get_running_loop()
        for i, (type_, fields) in enumerate(self.script):
            loop.call_later(0.001 * (i + 1), listener, type_, {"task_id": spec.task_id, **fields})
        return None

    def cancel(self, task_id: str) -> None:
        self.cancelled.append(task_id)

    def executor_of(self, task_id: str) -> str | None:
        return "solo"


async def serve(mesh: StandInMesh) -> TestClient:
    client = TestClient(TestServer(Gateway(mesh, [], ["key"]).app()))
    await client.start_server()
    return client


AUTH = {"Authorization": "Bearer key"}
DONE = ("DONE", {"finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                 "executed_by": "solo"})


async def test_health_is_503_with_a_reason_when_no_model_is_routable():
    client = await serve(StandInMesh({}, []))
    try:
        response = await client.get("/health")
        assert response.status == 503 and "no live node" in (await response.json())["reason"]
        response = await client.post("/v1/completions", json={"prompt": "x"}, headers=AUTH)
        assert response.status == 503
    finally:
        await client.close()


async def test_an_error_mid_stream_is_an_error_event_and_no_done():
    mesh = StandInMesh({"m": ["solo"]}, [("TOKEN", {"seq": 0, "text": "a", "ids": []}),
                                         ("ERROR", {"code": "peer_dead", "message": "gone", "retryable": True})])
    client = await serve(mesh)
    try:
        response = await client.post("/v1/completions", json={"prompt": "x", "stream": True}, headers=AUTH)
        assert response.status == 200
        events = [line[6:] for line in (await response.text()).splitlines() if line.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["text"] == "a"
        assert json.loads(events[-1])["error"]["message"] == "gone" and "[DONE]" not in events
        assert mesh.cancelled == []  # it ended by itself: nothing to cancel
    finally:
        await client.close()


async def test_a_refusal_before_the_first_token_keeps_its_status_when_streaming():
    mesh = StandInMesh({"m": ["solo"]}, [("FAILOVER", {"from": "x", "to": "y", "at_seq": 0, "reason": "r"}),
                                         ("ERROR", {"code": "busy", "message": "all busy", "retryable": True})])
    client = await serve(mesh)
    try:
        response = await client.post("/v1/chat/completions", headers=AUTH, json={
            "stream": True, "messages": [{"role": "user", "content": "x"}]})
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "busy"
    finally:
        await client.close()


async def test_model_choice_pinning_and_body_limits():
    mesh = StandInMesh({"m": ["solo"], "n": ["other"]}, [DONE])
    client = await serve(mesh)
    try:
        response = await client.post("/completions", json={"prompt": "x"}, headers=AUTH)
        assert response.status == 400 and (await response.json())["error"]["param"] == "model"
        response = await client.post("/completions", json={"prompt": "x", "model": "n"},
                                     headers={**AUTH, "x-zmqllm-peer": "other"})
        assert response.status == 200 and response.headers["x-zmqllm-executed-by"] == "solo"
        assert (mesh.specs[-1].model, mesh.specs[-1].peer) == ("n", "other")
        response = await client.post("/v1/completions", data=b"x" * (MAX_BODY_BYTES + 1), headers=AUTH)
        assert response.status == 413 and (await response.json())["error"]["code"] == "too_large"
        response = await client.get("/v1/models/nope", headers=AUTH)
        assert response.status == 404 and "m, n" in (await response.json())["error"]["message"]
        response = await client.delete("/v1/models", headers=AUTH)
        assert response.status == 405 and "error" in await response.json()
        response = await client.get("/v1/models", headers={"Authorization": "Basic key"})
        assert response.status == 401 and "x-request-id" in response.headers
    finally:
        await client.close()

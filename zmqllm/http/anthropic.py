"""Anthropic's HTTP API over the mesh (to be filled in)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from zmqllm.http.errors import ApiError
from zmqllm.http.relay import Answering

PATHS: tuple[str, ...] = ()
"""Paths whose errors take this API's shape."""


def error_body(error: ApiError) -> dict[str, Any]:
    return error.body()


def routes(gateway: Answering) -> list[web.RouteDef]:
    return []

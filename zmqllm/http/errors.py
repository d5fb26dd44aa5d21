"""HTTP errors as OpenAI's clients expect them: a status code and `{"error": {message, type, param, code}}`.

A mesh error code (CONTRACT: `busy`, `deadline`, ...) maps to the status a client retries or gives up on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RETRY_AFTER_S = 1
"""What a 429 (every node serving the model is busy) asks the client to wait: slots free within a task."""

_STATUS_OF_CODE: dict[str, int] = {
    "bad_request": 400, "malformed": 400, "peer_unknown": 400, "too_large": 413, "no_peer_for_model": 404,
    "busy": 429, "deadline": 504, "peer_dead": 503, "engine_failed": 500, "internal": 500,
}
_TYPE_OF_STATUS: dict[int, str] = {400: "invalid_request_error", 401: "authentication_error",
                                   404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}


@dataclass(frozen=True)
class ApiError(Exception):
    """A request that ends in an HTTP error; `param` names the request field at fault, when one is."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return self.message

    @property
    def type(self) -> str:
        return _TYPE_OF_STATUS.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        """OpenAI's error object (its SDKs raise BadRequestError, NotFoundError, ... from the status)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_S)} if self.status == 429 else {}


def from_task_error(fields: dict[str, Any]) -> ApiError:
    """A task's ERROR (CONTRACT: `error` fields) as the HTTP error its client sees."""
    code = str(fields.get("code") or "internal")
    return ApiError(_STATUS_OF_CODE.get(code, 500), str(fields.get("message") or code), code=code)


def bad(param: str, message: str) -> ApiError:
    """A 400 naming the parameter at fault."""
    return ApiError(400, message, param=param, code="invalid_value")

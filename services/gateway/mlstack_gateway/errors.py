"""The error every handler raises, answered as both services answer one (error_response)."""

from __future__ import annotations

from mlstack_common.asgi import error_response
from starlette.responses import Response


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Whole seconds a client should wait before sending again (Retry-After): a 503 always
        # says when, 1 s unless the cause knows better (an open circuit breaker does).
        if retry_after is None and status == 503:
            retry_after = 1
        self.retry_after = retry_after

    def response(self) -> Response:
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return error_response(self.status, self.message, headers)

"""The error every handler raises, answered as both services answer one (error_response)."""

from __future__ import annotations

from mlstack_common.asgi import error_response
from starlette.responses import Response

# A 401 names the credential it wants (RFC 9110, 11.6.1): the key, in the X-API-Key header.
API_KEY_CHALLENGE = 'ApiKey realm="mlstack", header="X-API-Key"'


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
        if self.status == 401:
            headers["WWW-Authenticate"] = API_KEY_CHALLENGE
        return error_response(self.status, self.message, headers)

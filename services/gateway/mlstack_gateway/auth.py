"""API key check for the public endpoints: one rule for every one of them."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from mlstack_gateway.errors import ApiError

API_KEY_HEADER = b"x-api-key"


class ApiKeyChecker:
    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode()

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Raise 401 unless the request's (lower-cased, ASGI) headers carry the key exactly once.

        A repeated header is refused whatever its values: a proxy in front may read the first
        and the application the last, so accepting either would let the two disagree.
        """
        provided = [value for name, value in headers if name == API_KEY_HEADER]
        if len(provided) > 1:
            raise ApiError(401, "repeated X-API-Key header: send it once")
        if not provided or not provided[0]:
            raise ApiError(401, "missing X-API-Key header")
        if not hmac.compare_digest(provided[0], self._key):
            raise ApiError(401, "invalid API key")

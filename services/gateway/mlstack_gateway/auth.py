"""API key check for the public endpoints."""

from __future__ import annotations

import hmac

from mlstack_gateway.errors import ApiError

API_KEY_HEADER = "x-api-key"


class ApiKeyChecker:
    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode()

    def check(self, provided: str | None) -> None:
        """Raise 401 unless ``provided`` is the key (compared in constant time)."""
        if not provided:
            raise ApiError(401, "missing X-API-Key header")
        if not hmac.compare_digest(provided.encode(), self._key):
            raise ApiError(401, "invalid API key")

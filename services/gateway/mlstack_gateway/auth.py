"""API key check for the public endpoints: one rule for every one of them.

Several keys may be valid at once (a rotation: the current key and the previous one). Each is
known by an id that says which it is (`current`, `previous`), never by anything derived from
the key, so the id may appear in metrics and logs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping

from mlstack_gateway.errors import ApiError

API_KEY_HEADER = b"x-api-key"


class ApiKeyChecker:
    def __init__(self, keys: Mapping[str, str]) -> None:
        if not keys:
            raise ValueError("at least one API key is needed")
        # Keys are compared as HMACs under a key of this process's own: every comparison is
        # then of 32 bytes against 32 bytes, so its time says nothing about a key's length.
        self._salt = secrets.token_bytes(32)
        self._keys = [(key_id, self._mac(key.encode())) for key_id, key in keys.items()]

    def _mac(self, value: bytes) -> bytes:
        return hmac.digest(self._salt, value, hashlib.sha256)

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The id of the key the request's (lower-cased, ASGI) headers carry exactly once;
        401 unless they carry one of the keys exactly once.

        A repeated header is refused whatever its values: a proxy in front may read the first
        and the application the last, so accepting either would let the two disagree.
        """
        provided = [value for name, value in headers if name == API_KEY_HEADER]
        if len(provided) > 1:
            raise ApiError(401, "repeated X-API-Key header: send it once")
        if not provided or not provided[0]:
            raise ApiError(401, "missing X-API-Key header")
        mac = self._mac(provided[0])
        # Every key is compared, whichever matches: the time taken does not say which key it
        # was, or how many were tried before it.
        matches = [hmac.compare_digest(mac, known) for _, known in self._keys]
        for (key_id, _), matched in zip(self._keys, matches, strict=True):
            if matched:
                return key_id
        raise ApiError(401, "invalid API key")

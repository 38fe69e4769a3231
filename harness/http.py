"""Plain HTTP/1.1, or HTTPS verified against a given CA, to the servers the tests, the e2e suite
and the benches talk to: one request per fresh connection, so that no client-side pooling hides
what the server does, and never through a proxy named in the environment (http.client reads
none)."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Headers(Mapping[str, str]):
    """An answer's header fields by name, whatever the case the server wrote it in (HTTP field
    names are case-insensitive); a field sent twice keeps its last value."""

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields = {name.lower(): value for name, value in fields}

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Headers

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def refused_with_retry_after(self) -> bool:
        return refused_with_retry_after(self.status, self.headers.get("retry-after"))


def refused_with_retry_after(status: int, retry_after: str | None) -> bool:
    """A 503 that says when to try again (Retry-After, whole seconds, at least 1): the one
    acceptable way for the gateway not to answer 200 while a dependency (the model, the database)
    is away."""
    return (
        status == 503
        and retry_after is not None
        and retry_after.isdigit()
        and int(retry_after) >= 1
    )


def request(
    method: str,
    url: str,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    *,
    ca: Path | None = None,
) -> Reply:
    """One request on a fresh connection; a dict or list body is sent as JSON, and a body's
    Content-Type is application/json unless `headers` name another. An https:// `url` is
    verified against the certificate `ca` alone (the system's trusted ones without it). The
    path is sent exactly as `url` has it."""
    scheme, _, rest = url.partition("://")
    host_port, _, path = rest.partition("/")
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    all_headers = dict(headers or {})
    if body is not None and not any(name.lower() == "content-type" for name in all_headers):
        all_headers["Content-Type"] = "application/json"
    conn: http.client.HTTPConnection
    if scheme == "https":
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
        conn = http.client.HTTPSConnection(host_port, timeout=timeout, context=context)
    else:
        assert scheme == "http", url
        conn = http.client.HTTPConnection(host_port, timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=all_headers)
        response = conn.getresponse()
        return Reply(response.status, response.read(), Headers(response.getheaders()))
    finally:
        conn.close()


def answers(url: str, status: int = 200, timeout: float = 2.0) -> bool:
    """Whether a GET of `url` answers `status` now (a refused or reset connection, or one that
    ends before a whole answer: no)."""
    try:
        return request("GET", url, timeout=timeout).status == status
    except (OSError, http.client.HTTPException):
        return False

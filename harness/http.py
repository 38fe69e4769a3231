"""Plain HTTP/1.1 to the servers the tests start on 127.0.0.1: one request per fresh connection,
so that no client-side pooling hides what the server does."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    url: str,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One HTTP/1.1 request on a fresh connection; a dict or list body is sent as JSON."""
    assert url.startswith("http://")
    host_port, _, path = url[len("http://") :].partition("/")
    host, _, port = host_port.partition(":")
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=all_headers)
        response = conn.getresponse()
        return Reply(response.status, response.read(), dict(response.getheaders()))
    finally:
        conn.close()


def answers(url: str, status: int = 200, timeout: float = 2.0) -> bool:
    """Whether a GET of `url` answers `status` now (a refused or reset connection: no)."""
    try:
        return request("GET", url, timeout=timeout).status == status
    except OSError:
        return False

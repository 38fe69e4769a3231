"""``python -m mlstack_gateway``: serve the gateway on HOST:PORT (default 0.0.0.0:8080), and its
/metrics on HOST:METRICS_PORT (default 9090)."""

from __future__ import annotations

import sys

from mlstack_common import serving

from mlstack_gateway.serving import serve
from mlstack_gateway.settings import GatewaySettings


def main() -> int:
    # The SQLite writer thread wakes from fsync needing the GIL; with the default 5 ms switch
    # interval a busy event loop holds it for long enough to add that wait to every commit.
    sys.setswitchinterval(0.0005)
    return serving.main("gateway", GatewaySettings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m mlstack_gateway``: serve the gateway on HOST:PORT (default 0.0.0.0:8080), and its
/metrics on HOST:METRICS_PORT (default 9090)."""

from __future__ import annotations

import logging
import sys

import uvloop
from mlstack_common.env import SettingsError

from mlstack_gateway.serving import serve
from mlstack_gateway.settings import GatewaySettings


def main() -> int:
    try:
        settings = GatewaySettings.from_env()
    except SettingsError as exc:
        print(f"mlstack gateway: {exc}", file=sys.stderr)
        return 2
    # The SQLite writer thread wakes from fsync needing the GIL; with the default 5 ms switch
    # interval a busy event loop holds it for long enough to add that wait to every commit.
    sys.setswitchinterval(0.0005)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    return uvloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())

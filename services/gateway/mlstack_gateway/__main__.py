"""``python -m mlstack_gateway``: serve the gateway on HOST:PORT (default 0.0.0.0:8080)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from mlstack_gateway.settings import GatewaySettings, SettingsError


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
    uvicorn.run(
        "mlstack_gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        server_header=False,
        # Longer than the idle timeouts of the clients in front (the gateway's pool, cloud load
        # balancers), so that the client, not the server, closes an idle keep-alive connection.
        timeout_keep_alive=75,
        # Kubernetes waits terminationGracePeriodSeconds (30 s by default) after SIGTERM.
        timeout_graceful_shutdown=20,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

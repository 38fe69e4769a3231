"""``python -m mlstack_model``: serve the model on HOST, REST on PORT and gRPC on GRPC_PORT
(defaults 0.0.0.0, 8080 and 8081)."""

from __future__ import annotations

import logging
import sys

import uvicorn
from mlstack_common.env import SettingsError
from mlstack_common.http_limits import limited_protocol

from mlstack_model.settings import ModelSettings


def main() -> int:
    try:
        settings = ModelSettings.from_env()
    except SettingsError as exc:
        print(f"mlstack model: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    # uvicorn's httptools protocol with a header size limit (431) and read timeouts (408).
    http = limited_protocol(settings.http_limits)
    uvicorn.run(
        "mlstack_model.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http,
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        server_header=False,
        # Longer than the idle timeouts of the clients in front (the gateway's pool, cloud load
        # balancers), so that the client, not the server, closes an idle keep-alive connection.
        timeout_keep_alive=int(settings.keepalive_timeout_seconds),
        # Kubernetes waits terminationGracePeriodSeconds (30 s by default) after SIGTERM.
        timeout_graceful_shutdown=20,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

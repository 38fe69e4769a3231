"""``python -m mlstack_model``: serve the model on HOST, REST on PORT and gRPC on GRPC_PORT
(defaults 0.0.0.0, 8080 and 8081); on SIGTERM, drain (``mlstack_common.serving``)."""

from __future__ import annotations

import sys

from mlstack_common import serving
from mlstack_common.http_limits import limited_protocol

from mlstack_model.app import create_app
from mlstack_model.settings import ModelSettings


async def serve(settings: ModelSettings) -> int:
    """Serve until SIGTERM or SIGINT, then drain; the process's exit code. The REST server's
    lifespan loads the model and runs the gRPC server (app.py)."""
    app = create_app(settings)
    # uvicorn's httptools protocol with a header size limit (431) and read timeouts (408).
    http = limited_protocol(settings.http_limits)
    rest = serving.server(app, settings, settings.port, http, lifespan=True)
    return await serving.serve(rest, app.dataplane, settings.shutdown_timeout_seconds)


def main() -> int:
    return serving.main("model", ModelSettings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())

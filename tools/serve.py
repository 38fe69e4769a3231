"""`make serve`: the model and the gateway side by side until Ctrl-C, started as the service
tests and the benchmarks start them (harness.services), on the ports `make serve` passes
(mk/services.mk's SERVE_*_PORT), their logs on this terminal.

They stop together: when either exits, the other is stopped and this command fails, saying
which one exited and with what status, so that the gateway never runs alone answering 503s.
Ctrl-C or SIGTERM stops both and ends it with 0.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from components.stack_file import ROOT
from harness.services import GatewayProcess, ModelProcess, ServiceProcess

# The gateway's key unless MLSTACK_API_KEY is set.
DEFAULT_API_KEY = "dev-key"


class Stopped(Exception):  # noqa: N818  # a signal, not an error
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stopped(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


def _on_stop_signals(handler: Callable[[int, FrameType | None], None] | signal.Handlers) -> None:
    """`handler` for SIGINT and SIGTERM. Once stopping, SIG_IGN: what is left runs without
    interruption, and a second Ctrl-C reaches the services alone."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def _wait(service: ServiceProcess) -> int:
    """Its exit status once it exits (0 for one never started), as a shell gives it: 128 + N
    for one ended by signal N."""
    if service.process is None:
        return 0
    code = service.process.wait()
    return code if code >= 0 else 128 - code


def run_together(services: Sequence[ServiceProcess]) -> int:
    """Start `services` (named by their `name`) in order and wait until one exits or a signal
    comes; then stop the others, last started first. The exit status: 0 after SIGINT or
    SIGTERM, else the first one's status (1 if that was 0: it was not asked to end)."""
    exits: queue.SimpleQueue[tuple[ServiceProcess, int]] = queue.SimpleQueue()

    def report_exit(service: ServiceProcess) -> None:
        exits.put((service, _wait(service)))

    _on_stop_signals(_stopped)
    try:
        for service in services:
            service.start()
            threading.Thread(target=report_exit, args=(service,), daemon=True).start()
        exited, status = exits.get()
        _on_stop_signals(signal.SIG_IGN)
    except Stopped as stop:
        _on_stop_signals(signal.SIG_IGN)
        if stop.signum == signal.SIGINT:
            # The terminal sent it to the whole foreground group: the services drain on it
            # already, and a second signal from here would make them skip the drain.
            for service in services:
                _wait(service)
        else:
            # SIGTERM reaches this process alone (make passes on the one it gets).
            for service in reversed(services):
                service.stop()
        return 0
    others = [s for s in services if s is not exited]
    print(
        f"mlstack: the {exited.name} exited with status {status}; "
        f"stopping the {' and the '.join(s.name for s in others)}.",
        file=sys.stderr,
        flush=True,
    )
    for service in reversed(others):
        service.stop()
    return status or 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.serve", description=__doc__)
    # No defaults: the port plan is mk/services.mk's.
    parser.add_argument("--model-port", type=int, required=True, help="the model's REST port")
    parser.add_argument("--model-grpc-port", type=int, required=True)
    parser.add_argument("--gateway-port", type=int, required=True)
    parser.add_argument("--gateway-metrics-port", type=int, required=True)
    args = parser.parse_args(argv)
    api_key = os.environ.get("MLSTACK_API_KEY") or DEFAULT_API_KEY
    store = "PostgreSQL from DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded SQLite"
    # From the repository's root, as make runs: relative paths in the settings mean from there.
    model = ModelProcess(
        None,
        None,
        port=args.model_port,
        grpc_port=args.model_grpc_port,
        name="model",
        cwd=ROOT,
    )
    gateway = GatewayProcess(
        model.url,
        None,
        {"MLSTACK_API_KEY": api_key, "METRICS_PORT": str(args.gateway_metrics_port)},
        port=args.gateway_port,
        name="gateway",
        cwd=ROOT,
    )
    print(
        f"mlstack: model on {model.url} (gRPC {model.grpc_target}), gateway on {gateway.url}"
        f" ({store}), its metrics on {gateway.metrics_url}/metrics; X-API-Key is"
        f" MLSTACK_API_KEY (default {DEFAULT_API_KEY}). Ctrl-C stops both.",
        flush=True,
    )
    return run_together([model, gateway])


if __name__ == "__main__":
    sys.exit(main())

"""`make serve` as a user runs it: from the repository root, with the default key, until Ctrl-C."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.services.support import MakeServe, predict, request

SETOSA = [5.1, 3.5, 1.4, 0.2]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def model_ready(serve: MakeServe) -> bool:
    try:
        return request("GET", serve.model_url + "/v2/health/ready", timeout=2).status == 200
    except OSError:
        return False


def test_make_serve_answers_through_the_gateway_and_ctrl_c_stops_both(
    model_dir: Path, tmp_path: Path
) -> None:
    # The user's environment, but the trained model of this session and a throwaway SQLite file.
    serve = MakeServe(tmp_path, {"MODEL_DIR": str(model_dir), "DATA_DIR": str(tmp_path)})
    serve.env.pop("MLSTACK_API_KEY", None)
    serve.env.pop("DATABASE_URL", None)
    serve.start()
    try:
        serve.wait_for("serving the model", lambda: model_ready(serve))
        serve.wait_until("/readyz")

        reply = predict(serve.url, [SETOSA], key="dev-key")
        assert reply.status == 200, reply.body
        assert reply.json()["predictions"] == [0]

        serve.interrupt()
        code = serve.wait(timeout=60)
        log = serve.log_path.read_text(errors="replace")
        # GNU make ends itself with the signal it was interrupted by, after its recipe ended; the
        # recipe's own end is what it reports with `***` ("Error 1", "Interrupt") when unclean.
        assert code == -signal.SIGINT, log
        assert "***" not in log, log
        assert "Traceback" not in log, log
        assert not serve.group_alive(), "a process of `make serve` outlived Ctrl-C"
        assert not any(listening(port) for port in serve.ports.values()), serve.ports
    finally:
        serve.stop()

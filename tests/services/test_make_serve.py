"""`make serve` as a user runs it: from the repository root, with the default key, until Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.make import make_env, run_make
from harness.services import SETOSA
from tests.services.support import MakeServe, predict


@pytest.fixture(autouse=True, scope="module")
def ctrl_c_not_ignored() -> Iterator[None]:
    """A terminal's foreground job takes SIGINT; a run started in the background (`nohup ... &`,
    a CI script's `&`) ignores it, and make and the script inherit that and could not be stopped
    by Ctrl-C at all. Python's own handler here gives them the default at exec, as a shell does."""
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_by_ctrl_c(serve: MakeServe) -> signal.Signals:
    serve.interrupt()
    return signal.SIGINT


def stop_by_sigterm_to_make(serve: MakeServe) -> signal.Signals:
    """As a process manager stops a command: SIGTERM to make alone, which passes it on."""
    serve.signal(signal.SIGTERM)
    return signal.SIGTERM


@pytest.mark.parametrize("stop", [stop_by_ctrl_c, stop_by_sigterm_to_make])
def test_make_serve_answers_through_the_gateway_and_a_stop_ends_both(
    model_dir: Path, tmp_path: Path, stop: Callable[[MakeServe], signal.Signals]
) -> None:
    # The user's environment, but the trained model of this session and a throwaway SQLite file.
    serve = MakeServe(tmp_path, {"MODEL_DIR": str(model_dir), "DATA_DIR": str(tmp_path)})
    serve.env.pop("MLSTACK_API_KEY", None)
    serve.env.pop("DATABASE_URL", None)
    serve.start()
    try:
        serve.wait_for_url(serve.model_url + "/v2/health/ready")
        serve.wait_ready()

        reply = predict(serve.url, [SETOSA], key="dev-key")
        assert reply.status == 200, reply.body
        assert reply.json()["predictions"] == [0]
        # `make oip-check` with the same variables finds the model where `make serve` put it.
        check = run_make("oip-check", *serve.variables, env=make_env("PYTHONPATH"))
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.count(": ok (") == 2, check.stdout

        signum = stop(serve)
        code = serve.wait(timeout=60)
        log = serve.log_path.read_text(errors="replace")
        # GNU make ends itself with the signal it was stopped by, after its recipe ended; the
        # recipe's own end is what it reports with `***` ("Error 1", "Interrupt") when unclean.
        assert code == -signum, log
        assert "***" not in log, log
        assert "Traceback" not in log, log
        assert not serve.group_alive(), f"a process of `make serve` outlived {signum.name}"
        assert not any(listening(port) for port in serve.ports.values()), serve.ports
    finally:
        serve.stop()


def test_make_serve_fails_and_stops_the_gateway_when_the_model_cannot_start(
    model_dir: Path, tmp_path: Path
) -> None:
    serve = MakeServe(tmp_path, {"MODEL_DIR": str(model_dir), "DATA_DIR": str(tmp_path)})
    # Another program already listens on the model's port.
    with socket.create_server(("127.0.0.1", serve.ports["SERVE_MODEL_PORT"])):
        serve.start()
        try:
            code = serve.wait(timeout=120)
            log = serve.log_path.read_text(errors="replace")
            assert code != 0, log
            assert re.search(r"^mlstack: the model exited with status [1-9]", log, re.M), log
            assert not serve.group_alive(), "a process of `make serve` outlived the model"
            assert not listening(serve.ports["SERVE_GATEWAY_PORT"]), log
        finally:
            serve.stop()

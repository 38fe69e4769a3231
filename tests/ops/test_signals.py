"""harness.signals, as the tools that change a cluster take SIGINT, SIGTERM and SIGHUP: one
interruption; held off, from `hold` to the end of the command, but in an `interruptible` wait;
each one held off kept and listed as the command ends, never delivered as a held part ends.

The signals are sent to the main thread (`pthread_kill`), as to the one thread of a tool: sent to
the process, one goes to any thread that does not block it, and pytest's may have others."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from harness import signals


@pytest.fixture(autouse=True)
def default_handling() -> Iterator[None]:
    """Each test starts with the stop signals handled as by default, whatever this run inherited
    (a make in the background ignores SIGINT, one under nohup SIGHUP: `interrupting` leaves a
    signal ignored from the start alone); as they were again after it."""
    defaults: dict[int, signals.Handler] = {
        signum: signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        for signum in signals.STOP_SIGNALS
    }
    with signals.handling(defaults):
        yield


def send(signum: signal.Signals) -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signum)


def test_a_signal_after_hold_is_kept_and_listed_not_raised() -> None:
    with signals.interrupting() as held_off:
        signals.hold()
        send(signal.SIGTERM)
        assert signal.SIGTERM in signal.sigpending()
    assert held_off == ["SIGTERM"]
    assert signal.SIGTERM not in signal.sigpending()


def test_a_wait_is_interrupted_and_every_later_signal_is_listed() -> None:
    with signals.interrupting() as held_off:
        signals.hold()
        with (
            pytest.raises(signals.Interrupted, match=r"interrupted \(SIGINT\)"),
            signals.interruptible(),
        ):
            send(signal.SIGINT)
            signal.sigtimedwait({signal.SIGUSR1}, 5)  # the handler runs before this ends
        for later in (signal.SIGHUP, signal.SIGTERM):
            send(later)
        with signals.interruptible():  # after the first, nothing is interrupted any more
            pass
    assert sorted(held_off) == ["SIGHUP", "SIGTERM"]


def test_the_handlers_and_mask_are_as_they_were_after_the_command() -> None:
    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with pytest.raises(signals.Interrupted), signals.interrupting():
        send(signal.SIGHUP)
        signal.sigtimedwait({signal.SIGUSR1}, 5)
    assert {s: signal.getsignal(s) for s in signals.STOP_SIGNALS} == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask

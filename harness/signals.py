"""The signals that ask a command to stop, as an operations tool that changes a cluster takes
them: SIGINT (Ctrl-C), SIGTERM (`kill`, or make passing on its own) and SIGHUP (a terminal
hung up: a dropped SSH session) are one interruption, an `Interrupted` (a KeyboardInterrupt)
raised in the main thread; and a tool puts things back, or says what it left, with them held
off.

    with interrupting() as held_off:    # the whole command
        read_what_is_there()            # an interruption here: nothing was changed
        hold()                          # from the first change to the end: a change, and
        change()                        # what undoes it, never cut half-way
        with interruptible():           # a long wait, which a signal may end
            wait()
    for name in held_off: ...           # what came while held, taken off: say so

Held off, a signal is blocked, not ignored: it is kept until the end of `interrupting`'s
block, and listed then. After the first interruption, every later one is held off. A command
started while they are held off inherits the block; a Go program unblocks them at its start,
though, and a terminal sends a Ctrl-C to its whole foreground group: tools.stack.run starts such
a command in a process group of its own.

For a command of one thread: the mask is the calling thread's, and a signal sent to the process
goes to any thread that does not block it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any, Final, TypeAlias

STOP_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
# What signal.signal takes and signal.getsignal gives.
Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@contextlib.contextmanager
def handling(chosen: Mapping[int, Handler]) -> Iterator[None]:
    """Each signal of `chosen` handled by its handler for the block, from the main thread; as
    before once it ends."""
    previous = {signum: signal.getsignal(signum) for signum in chosen}
    for signum, handler in chosen.items():
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


class Interrupted(KeyboardInterrupt):
    """One of STOP_SIGNALS arrived: `interrupted (SIGTERM)`."""

    def __init__(self, signum: int) -> None:
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted ({self.name})")

    def __str__(self) -> str:
        return str(self.args[0])


class _State:
    """The signals `interrupting` handles (not those the process began ignoring: nohup's
    SIGHUP), and whether one has interrupted since it began. Signals are the process's: one."""

    handled: frozenset[int] = frozenset()
    interrupted = False


_STATE: Final = _State()


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    """The first one: every stop signal held off from now on, then an Interrupted. A later one
    that reaches Python all the same (one that came with it, handled in the same pass) is
    dropped."""
    if _STATE.interrupted:
        return
    _STATE.interrupted = True
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupting() -> Iterator[list[str]]:
    """For the block, from the main thread: each stop signal the process does not ignore an
    Interrupted. At its end, the handlers and the signal mask as they were, and the names of the
    signals held off meanwhile (blocked, then taken off here, not delivered) in the list it
    yields: they asked for what has just been done, the command's end."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    held_off: list[str] = []
    _STATE.interrupted = False
    _STATE.handled = frozenset(s for s, handler in previous.items() if handler != signal.SIG_IGN)
    for signum in _STATE.handled:
        signal.signal(signum, _on_stop_signal)
    try:
        yield held_off
    finally:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        except Interrupted as late:
            # Come as the block ended (its handler runs as the mask changes; the mask is set):
            # held off as any that comes later.
            held_off.append(late.name)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        while (came := signal.sigtimedwait(STOP_SIGNALS, 0)) is not None:
            if came.si_signo in _STATE.handled:
                held_off.append(signal.Signals(came.si_signo).name)
        _STATE.handled, _STATE.interrupted = frozenset(), False
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def hold() -> None:
    """The stop signals held off from now to the end of `interrupting`'s block (but in an
    `interruptible` one), in this thread and in the commands it starts: one that comes meanwhile
    is kept, and listed as that block ends. Never taken back before then, so that no signal is
    delivered as a held part ends, between a change and the message that says what it left."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """After `hold`, a block a stop signal may interrupt (a long wait): one held off before it
    is raised as it begins. Nothing changes after the first interruption: held off it stays."""
    if _STATE.interrupted:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        # Held off again, as before (and so after an interruption inside: the handler blocked
        # them).
        signal.pthread_sigmask(signal.SIG_SETMASK, previous | STOP_SIGNALS)

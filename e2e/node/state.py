"""What the node records in its folder (`state.json`): the daemons it started, by pid and
identity, and the machine's state before `up` that `down` compares with or restores. Read afresh
by every call, so `up` and `down` may be two commands."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from e2e import process
from e2e.node.layout import Layout
from harness.poll import wait_until
from harness.processes import alive


class NodeState:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.layout.state_file.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("pids", {})
        return data

    def save(self, state: dict[str, Any]) -> None:
        tmp = self.layout.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.layout.state_file)

    def record(self, key: str, value: object) -> None:
        state = self.read()
        state[key] = value
        self.save(state)

    # --- daemons --------------------------------------------------------------------------
    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        """Start daemon `name` detached, its output in `logs/<name>.log`; its pid recorded, and
        the process's identity (`process.identity`)."""
        proc = process.spawn(argv, self.layout.logs / f"{name}.log", env)
        state = self.read()
        state["pids"][name] = proc.pid
        state.setdefault("identities", {})[name] = process.identity(proc.pid)
        self.save(state)
        return proc.pid

    def running(self) -> dict[str, int]:
        """The recorded daemons whose process still runs, by name, with their pids. A recorded
        pid the kernel has given to another program since (the daemon exited, or the machine
        restarted) is not among them: that program is never signalled nor counted as left."""
        state = self.read()
        found = {name: self._pid(state, name) for name in state["pids"]}
        return {name: pid for name, pid in found.items() if pid is not None}

    @staticmethod
    def _pid(state: dict[str, Any], name: str) -> int | None:
        """Daemon `name`'s recorded pid while its process still runs; None otherwise."""
        pid = state["pids"].get(name)
        if pid is None or not alive(int(pid)):
            return None
        recorded = state.get("identities", {}).get(name)
        # No identity recorded (a folder an older suite started): the pid alone.
        return int(pid) if recorded in (None, process.identity(int(pid))) else None

    def alive(self, name: str) -> bool:
        return self._pid(self.read(), name) is not None

    def stop(self, name: str, grace: float = 10) -> None:
        state = self.read()
        pid = self._pid(state, name)
        state["pids"].pop(name, None)
        state.get("identities", {}).pop(name, None)
        if pid is not None:
            process.stop_all([pid], grace)
        self.save(state)

    def wait(self, what: str, ready: Callable[[], bool], timeout: float, daemon: str) -> None:
        """Poll `ready` every 0.1 s until it holds; a RuntimeError past `timeout`, or as soon as
        `daemon` is found exited, with the end of its log."""

        def exited() -> str | None:
            return None if self.alive(daemon) else f"{daemon} exited"

        wait_until(ready, what, timeout, self.layout.logs / f"{daemon}.log", exited=exited)

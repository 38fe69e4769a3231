"""The mechanisms the tests, the e2e machinery, the benchmarks and the tools share are defined in
harness/ alone: a loop that polls until a deadline (harness.poll), a free-port finder
(harness.ports) and a PostgreSQL launcher (harness.postgres). A second one anywhere else in the
project fails here; use or extend the harness's."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from tests.paths import ROOT
from tests.unit.modules import module_files, parsed

OWNER: Final = "harness"
HARNESS: Final = ROOT / OWNER
# This module, which names the programs it looks for.
THIS_FILE: Final = Path(__file__).resolve()
# The programs a PostgreSQL launcher runs; the server's own name is also a user's and a
# database's, so it does not tell.
POSTGRES_PROGRAMS: Final = frozenset({"initdb", "pg_ctl", "pg_ctlcluster"})

Finder = Callable[[ast.AST], Iterator[int]]


def _called(node: ast.Call) -> str:
    function = node.func
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else ""


def _own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """`node` and everything inside it but the bodies of the functions it defines."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _own_nodes(child)


def poll_loops(tree: ast.AST) -> Iterator[int]:
    """The lines of the `while` loops that sleep and read the monotonic clock: polls until a
    deadline."""
    for node in ast.walk(tree):
        if isinstance(node, ast.While):
            called = {_called(n) for n in _own_nodes(node) if isinstance(n, ast.Call)}
            if "sleep" in called and "monotonic" in called:
                yield node.lineno


def free_port_finders(tree: ast.AST) -> Iterator[int]:
    """The lines of the functions that return the port of a socket they bound, or what they
    made of it: a port for someone else to bind, once the socket is closed."""
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        nodes = list(_own_nodes(function))
        ports = {
            target.id
            for node in nodes
            if isinstance(node, ast.Assign | ast.AnnAssign) and _reads_sockname(node.value)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        for node in nodes:
            if isinstance(node, ast.Return) and node.value is not None:
                value = node.value
                names = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
                if _reads_sockname(value) or names & ports:
                    yield function.lineno
                    break


def _reads_sockname(node: ast.AST | None) -> bool:
    return node is not None and any(
        isinstance(n, ast.Call) and _called(n) == "getsockname" for n in ast.walk(node)
    )


def postgres_launches(tree: ast.AST) -> Iterator[int]:
    """The lines naming a program that creates or starts a PostgreSQL server."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and str(node.value).rpartition("/")[2] in POSTGRES_PROGRAMS
        ):
            yield node.lineno


def outside_harness(finder: Finder) -> list[str]:
    """Where `finder` finds its mechanism in the project's modules outside harness/."""
    return [
        f"{path}:{line}"
        for module, path in module_files()
        if module.split(".")[0] != OWNER and path != THIS_FILE
        for line in finder(parsed(path))
    ]


def found_in(finder: Finder, source: str) -> list[int]:
    return list(finder(ast.parse(textwrap.dedent(source))))


def test_the_finders_find_what_the_harness_defines() -> None:
    assert found_in(
        poll_loops,
        """
        def wait(ready):
            deadline = time.monotonic() + 10
            while not ready():
                if time.monotonic() > deadline:
                    raise TimeoutError
                time.sleep(0.1)
        """,
    ) == [4]
    assert found_in(
        free_port_finders,
        """
        def free_port():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
                return port
        """,
    ) == [2]
    assert found_in(postgres_launches, 'subprocess.run([bindir / "initdb", "-D", data])') == [1]


def test_the_finders_pass_over_what_only_looks_alike() -> None:
    # A fixed number of samples; a server that keeps its socket; a user named postgres.
    assert (
        found_in(
            poll_loops,
            """
        for _ in range(8):
            seen.append(sample())
            time.sleep(1)
        """,
        )
        == []
    )
    assert (
        found_in(
            free_port_finders,
            """
        def serve():
            with socket.socket() as server:
                server.bind(("127.0.0.1", 0))
                yield f"http://127.0.0.1:{server.getsockname()[1]}"
        """,
        )
        == []
    )
    assert found_in(postgres_launches, 'connect(user="postgres")') == []


def test_harness_alone_polls_until_a_deadline() -> None:
    assert outside_harness(poll_loops) == []


def test_harness_alone_finds_free_ports() -> None:
    assert outside_harness(free_port_finders) == []


def test_harness_alone_launches_postgresql() -> None:
    assert outside_harness(postgres_launches) == []


def test_the_harness_has_each_of_them() -> None:
    found = {
        finder.__name__: [
            str(path)
            for _, path in module_files()
            if path != THIS_FILE and any(finder(parsed(path)))
        ]
        for finder in (poll_loops, free_port_finders, postgres_launches)
    }
    assert found == {
        "poll_loops": [str(HARNESS / "poll.py")],
        "free_port_finders": [str(HARNESS / "ports.py")],
        "postgres_launches": [str(HARNESS / "postgres.py")],
    }

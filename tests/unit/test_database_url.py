"""The gateway's database URLs carry any password the stack's secret may hold: asyncpg reads back
the user, password, host, port and database the program meant, whatever characters are in it."""

from __future__ import annotations

from typing import Any

import pytest
from asyncpg import connect_utils

from components import database
from harness.program import ProgramRun, run_program, stack_config
from tools.render import stacks

# Every character with a meaning in a URL or in a libpq connection string, and a backslash.
PASSWORD = "a/b@c:d%2Fe+f=g?h#i'j\\k l&m"


def asyncpg_reads(url: str) -> dict[str, Any]:
    """What asyncpg connects with for `url`: its own DSN parser, as asyncpg.connect calls it
    (private, and untyped: the pinned asyncpg's, so an upgrade that changes it fails here)."""
    addresses, params = connect_utils._parse_connect_dsn_and_args(  # type: ignore[attr-defined]
        dsn=url, host=None, port=None, user=None, password=None, passfile=None,
        database=None, ssl=None, service=None, servicefile=None, direct_tls=None,
        server_settings=None, target_session_attrs=None, krbsrvname=None, gsslib=None,
    )  # fmt: skip
    return {
        "addresses": addresses,
        "user": params.user,
        "password": params.password,
        "database": params.database,
    }


@pytest.fixture(scope="module", params=stacks())
def odd_password(request: pytest.FixtureRequest) -> ProgramRun:
    return run_program(
        request.param, {**stack_config(request.param), "mlstack:databasePassword": PASSWORD}
    )


@pytest.mark.parametrize(
    ("key", "service"), [("database-url", database.NAME), ("database-read-url", database.READ_NAME)]
)
def test_asyncpg_reads_back_the_password_as_it_is(
    odd_password: ProgramRun, key: str, service: str
) -> None:
    secret = odd_password.one("Secret", "gateway")
    url = secret.inputs["stringData"][key]
    host = f"{service}.{secret.metadata['namespace']}.svc"
    assert asyncpg_reads(url) == {
        "addresses": [(host, database.PORT)],
        "user": database.USER,
        "password": PASSWORD,
        "database": database.DB_NAME,
    }


def test_the_url_is_still_a_secret(odd_password: ProgramRun) -> None:
    assert odd_password.one("Secret", "gateway").secret_paths == ["stringData"]

"""The checks a postgresql:// URL passes before the gateway hands it to asyncpg.

asyncpg splits a URL with `urllib.parse` and reads the user and password up to the first '@'.
A password pasted in without percent-encoding is cut at its first '/', '?' or '#' and the rest
taken for a host, a port or a database, and the error asyncpg raises then quotes that piece.
These checks find such a URL before it is used and say what is wrong with it in words that
never contain any part of it: the URL holds the password.
"""

from __future__ import annotations

import re
import urllib.parse

from mlstack_common.env import SettingsError

# The URL schemes libpq and asyncpg take for PostgreSQL.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# A '%' that does not start a %XX escape (RFC 3986, pct-encoded).
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODE_HINT = (
    "percent-encode the user and password (Python: urllib.parse.quote(password, safe=''))"
)


def check_postgres_url(url: str, given: str) -> None:
    """Raise SettingsError, naming the variable `given` and never the URL, unless `url` (which
    starts with one of POSTGRES_SCHEMES) is one that asyncpg reads the way it was meant."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced '[' or ']'
        raise SettingsError(
            f"{given} has a '[' or ']' that does not enclose an IPv6 address; {_ENCODE_HINT}"
        ) from None
    if "@" in parts.path + parts.query + parts.fragment:
        # The password's '/', '?' or '#' ended the host part: what follows it was taken for
        # the database name, the query or the fragment.
        raise SettingsError(
            f"{given} has an '@' after its host part: a '/', '?' or '#' in the password "
            f"ends the host part early; {_ENCODE_HINT}"
        )
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "@" in userinfo:
        raise SettingsError(
            f"{given} has more than one '@' before its host: an '@' in the user or password "
            f"is written %40; {_ENCODE_HINT}"
        )
    if at and _STRAY_PERCENT.search(userinfo):
        raise SettingsError(
            f"{given} has a '%' in its user or password that is not a %XX escape; {_ENCODE_HINT}"
        )
    for host in hosts.split(","):
        # host:port, or [IPv6 address]:port
        port = (host.rpartition("]")[2] if host.startswith("[") else host).partition(":")[2]
        if port and not port.isdigit():
            raise SettingsError(f"{given} has a port that is not a number; {_ENCODE_HINT}")
    if parts.query:
        try:
            urllib.parse.parse_qs(parts.query, strict_parsing=True)
        except ValueError:
            raise SettingsError(
                f"{given} has a query string that is not name=value pairs joined by '&'"
            ) from None

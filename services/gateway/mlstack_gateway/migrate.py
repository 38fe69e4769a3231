"""``python -m mlstack_gateway.migrate``: bring the PostgreSQL schema of DATABASE_URL (or of the
file DATABASE_URL_FILE names) up to date, then exit. The stack's migrations Job runs it as the
role that owns the schema (components/migrations.py), so that the gateway itself may serve as a
role that cannot change the schema (DATABASE_MIGRATE=false, services/database/roles.sql).

The same migrations as the gateway applies at start, under the same advisory lock, so that two
runs at once take turns; a schema already current is left as it is. A server that does not
answer yet, or does not have the role or the database yet, is waited for, in all for no longer
than DATABASE_MIGRATE_TIMEOUT_SECONDS (300 s); LOG_LEVEL as the gateway's.

Exit status 0 once the schema is current; 1, with one line on stderr saying why, when it could
not be brought up to date; 2 for a setting that cannot be used. No line holds the URL.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from mlstack_common.env import SettingsError

from mlstack_gateway.settings import MigrateSettings
from mlstack_gateway.stores.postgres import MigrationError, migrate_database

log = logging.getLogger("mlstack_gateway.migrate")
# Each line of stderr that says why the command failed starts with this.
PREFIX = "mlstack gateway migrate: "


def main() -> int:
    try:
        settings = MigrateSettings.from_env()
    except SettingsError as exc:
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        applied = asyncio.run(migrate_database(settings.database_url, settings.timeout_seconds))
    except MigrationError as exc:
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return 1
    if applied:
        log.info("schema up to date: applied migrations %s", applied)
    else:
        log.info("schema up to date: no migration to apply")
    return 0


if __name__ == "__main__":
    sys.exit(main())

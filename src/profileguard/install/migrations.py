"""The migrations of this package the database has not recorded."""

from __future__ import annotations

import psycopg

from profileguard import sql as sqlfiles
from profileguard.installation import applied_versions


def pending_migrations(conn: psycopg.Connection) -> list[sqlfiles.Migration]:
    """The migrations of this package that the database has not recorded, in order."""
    applied = applied_versions(conn)
    return [m for m in sqlfiles.migrations() if m.version not in applied]

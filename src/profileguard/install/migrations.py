"""The migrations the database has recorded, and those of this package it has not."""

from __future__ import annotations

import psycopg

from profileguard import sql as sqlfiles
from profileguard.installation import schema_present


def applied_versions(conn: psycopg.Connection) -> set[int]:
    """The migration versions recorded in the database (empty when not installed)."""
    if not schema_present(conn):
        return set()
    return {int(row[0]) for row in conn.execute(sqlfiles.query("applied_versions"))}


def pending_migrations(conn: psycopg.Connection) -> list[sqlfiles.Migration]:
    """The migrations of this package that the database has not recorded, in order."""
    applied = applied_versions(conn)
    return [m for m in sqlfiles.migrations() if m.version not in applied]

"""What is installed in a database, read once: tables, keys, key type, version, flags, config.

The installed tables come from `profileguard.settings` (the row `install` wrote), never from the
current configuration: after a configuration change without a re-install, the trigger still
serves the installed tables, so everything that works beside it (worker, backfill, audit,
uninstall) must use them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.catalog import inspect_table
from profileguard.config import TableRef
from profileguard.errors import ConfigError, NotInstalledError

# The name of the statement-level AFTER INSERT trigger on the identity table (generated.sql
# creates it; migration 0004's stats() looks for it by this name).
TRIGGER_NAME = "profileguard_after_insert"
# The UPDATE triggers that keep profiles in step after creation (sync.sql creates them).
UPDATE_TRIGGER_NAMES = ("profileguard_after_update_row", "profileguard_after_update")
NOT_INSTALLED_HINT = "run: profileguard install"


def table_sql(ref: TableRef) -> sql.Identifier:
    """The quoted, schema-qualified name of a table, for composing SQL."""
    return sql.Identifier(ref.schema, ref.name)


def table_parts(identity: TableRef, profile: TableRef, key_type: str) -> dict[str, sql.Composable]:
    """The {identity}, {identity_key}, {profile}, {profile_key} and {key_type} placeholders."""
    return {
        "identity": table_sql(identity),
        "identity_key": sql.Identifier(identity.key),
        "profile": table_sql(profile),
        "profile_key": sql.Identifier(profile.key),
        # The type text comes from format_type() in the catalog, never from configuration.
        "key_type": sql.SQL(key_type),
    }


def schema_present(conn: psycopg.Connection) -> bool:
    """True when the profileguard schema and its migrations table exist."""
    row = conn.execute(sqlfiles.query("schema_exists")).fetchone()
    if not (row and row[0]):
        return False
    found = conn.execute("select to_regclass('profileguard.migrations') is not null").fetchone()
    return bool(found and found[0])


def schema_version(conn: psycopg.Connection) -> int:
    """The schema version in the database; 0 when profileguard is not installed."""
    if not schema_present(conn):
        return 0
    row = conn.execute(sqlfiles.query("installed_version")).fetchone()
    return int(row[0]) if row else 0


def require_version(conn: psycopg.Connection) -> int:
    """The schema version; NotInstalledError when profileguard is not installed."""
    version = schema_version(conn)
    if version == 0:
        raise NotInstalledError(
            "profileguard is not installed in this database", hint=NOT_INSTALLED_HINT
        )
    return version


def applied_versions(conn: psycopg.Connection) -> set[int]:
    """The migration versions recorded in the database (empty when not installed)."""
    if not schema_present(conn):
        return set()
    return {int(row[0]) for row in conn.execute(sqlfiles.query("applied_versions"))}


def require_current(conn: psycopg.Connection, *, missing: str) -> int:
    """The schema version, once the database has applied every migration of this package (the
    one required version: the package's functions expect its tables); NotInstalledError naming
    `profileguard upgrade` otherwise. `missing` names what an older schema may lack."""
    version = require_version(conn)
    applied = applied_versions(conn)
    behind = [m.version for m in sqlfiles.migrations() if m.version not in applied]
    if behind:
        raise NotInstalledError(
            f"profileguard's schema in this database lacks migrations {behind} of this package "
            f"(version {sqlfiles.latest_version()}): {missing} may not work",
            hint="run: profileguard upgrade",
        )
    return version


def _ref(table: str, key: str) -> TableRef:
    schema_name, _, name = str(table).partition(".")
    return TableRef(schema_name, name, str(key))


def key_type_of(conn: psycopg.Connection, identity: TableRef) -> str | None:
    """format_type() of the identity key (schema-qualified); None when table or key is missing."""
    facts = inspect_table(conn, identity)
    if facts is None or identity.key not in facts.columns:
        return None
    return facts.columns[identity.key].type


@dataclass(frozen=True)
class Installation:
    """The installed profileguard of one database, as `profileguard.settings` and the catalog
    describe it (read with `Installation.read`)."""

    version: int
    identity: TableRef
    profile: TableRef
    key_type: str | None  # None when the installed identity table or its key is gone
    enabled: bool
    strict: bool
    config: dict[str, Any]
    package_version: str | None
    installed_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def read(cls, conn: psycopg.Connection) -> Installation | None:
        """What is installed, or None when profileguard is not (no schema or no settings row)."""
        version = schema_version(conn)
        if version == 0:
            return None
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(sqlfiles.query("settings")).fetchone()
        if row is None:
            return None
        identity = _ref(row["identity_table"], row["identity_key"])
        return cls(
            version=version,
            identity=identity,
            profile=_ref(row["profile_table"], row["profile_key"]),
            key_type=key_type_of(conn, identity),
            enabled=bool(row["enabled"]),
            strict=bool(row["strict"]),
            config=dict(row["config"] or {}),
            package_version=row["package_version"],
            installed_at=row["installed_at"],
            updated_at=row["updated_at"],
        )

    @classmethod
    def require(cls, conn: psycopg.Connection) -> Installation:
        """What is installed; NotInstalledError (naming the next command) when nothing is."""
        found = cls.read(conn)
        if found is None:
            require_version(conn)  # raises: no schema
            raise NotInstalledError(
                "profileguard's settings row is missing", hint=NOT_INSTALLED_HINT
            )
        return found

    @property
    def identity_sql(self) -> sql.Identifier:
        return table_sql(self.identity)

    @property
    def profile_sql(self) -> sql.Identifier:
        return table_sql(self.profile)

    def require_key_type(self) -> str:
        """The identity key's type; ConfigError (naming what to do) when the table is gone."""
        if self.key_type is None:
            raise ConfigError(
                f"the installed identity table {self.identity} (key {self.identity.key}) "
                "does not exist",
                hint="restore the table, or run: profileguard uninstall, then profileguard "
                "install with identity.table set to your users table",
            )
        return self.key_type

    def parts(self) -> dict[str, sql.Composable]:
        """The table-name placeholders of the installed tables (see `table_parts`)."""
        return table_parts(self.identity, self.profile, self.require_key_type())


__all__ = [
    "NOT_INSTALLED_HINT",
    "TRIGGER_NAME",
    "UPDATE_TRIGGER_NAMES",
    "Installation",
    "applied_versions",
    "key_type_of",
    "require_current",
    "require_version",
    "schema_present",
    "schema_version",
    "table_parts",
    "table_sql",
]

"""`profileguard sql`: what install or upgrade would run here, rendered without running it, and
the guard that stops the rendered file on another database."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.catalog import table_oid
from profileguard.config import Settings, TableRef
from profileguard.errors import NotInstalledError
from profileguard.install.identity_phase import (
    check_trigger_choice,
    identity_phase,
    takeover_enables,
)
from profileguard.install.main_phase import main_phase
from profileguard.install.run import InstallResult, Recorder, transaction
from profileguard.install.templates import template
from profileguard.installation import schema_version

# Rendering waits this long at most behind an ACCESS EXCLUSIVE lock on a table it describes.
RENDER_LOCK_TIMEOUT_MS = 5000


def render(
    settings: Settings,
    *,
    strict: bool = False,
    enabled: bool | None = None,
    create_profile_table: bool = False,
    replace_triggers: Sequence[str] = (),
    source: str = "install",
    keep_triggers: Sequence[str] = (),
    command: str = "sql",
) -> InstallResult:
    """What `install` would run here, rendered without running it: catalog reads only, in a
    read-only transaction that is rolled back. Deparsing a table's constraints takes ACCESS
    SHARE on that table (only ACCESS EXCLUSIVE conflicts with it); nothing else is locked."""
    enabled = takeover_enables(enabled, replace_triggers)
    with transaction(settings, dry_run=True) as conn:
        conn.execute("set transaction read only")
        conn.execute(f"set local lock_timeout = {RENDER_LOCK_TIMEOUT_MS}")
        if source == "upgrade" and schema_version(conn) == 0:
            raise NotInstalledError(
                "profileguard is not installed in this database", hint="run: profileguard install"
            )
        own = source == "install"
        beside = []
        if own:
            beside = check_trigger_choice(
                conn,
                settings,
                enabled=enabled,
                replace_triggers=replace_triggers,
                keep_triggers=keep_triggers,
                command=command,
            )
        rec = Recorder(conn, execute=False)
        result = main_phase(
            rec,
            settings,
            strict=strict if own else None,
            enabled=enabled,
            create_profile_table=create_profile_table,
            source=source,
        )
        result.notes.extend(beside)
        main = len(rec.statements)
        identity_phase(
            rec,
            settings,
            result,
            create_profile_table=create_profile_table,
            replace_triggers=replace_triggers,
            keep_triggers=keep_triggers,
            source=source,
        )
        result.statements = rec.statements
        result.identity_statements = len(rec.statements) - main
        result.render_guard = _render_guard(conn, settings, result.version_before)
        return result


def _table_signature(conn: psycopg.Connection, ref: TableRef) -> str:
    row = conn.execute(sqlfiles.query("table_signature"), {"oid": table_oid(conn, ref)}).fetchone()
    return str(row[0]) if row else ""


def _render_guard(conn: psycopg.Connection, settings: Settings, version: int) -> str:
    """A DO block that stops the rendered file when the target database is not the one it was
    rendered for: other columns in the identity or profile table, or another schema version."""
    return template(
        "render_guard.sql",
        identity=sql.Literal(
            sql.Identifier(settings.identity.schema, settings.identity.name).as_string(conn)
        ),
        profile=sql.Literal(
            sql.Identifier(settings.profile.schema, settings.profile.name).as_string(conn)
        ),
        identity_signature=sql.Literal(_table_signature(conn, settings.identity)),
        profile_signature=sql.Literal(_table_signature(conn, settings.profile)),
        version=sql.Literal(version),
    ).as_string(conn)

"""`profileguard sql`: what install or upgrade would run here, rendered without running it; the
precondition check that stops a rendered file on a database it was not rendered for; the
retried lock it takes right before the statements that lock the identity table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.catalog import table_oid
from profileguard.config import Settings, TableRef
from profileguard.errors import NotInstalledError
from profileguard.install.cron import schedule_sweep
from profileguard.install.identity_phase import (
    check_trigger_choice,
    identity_phase,
    takeover_enables,
)
from profileguard.install.locking import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    DDL_LOCK_TIMEOUT_MS,
    RETRY_FOR_SECONDS,
)
from profileguard.install.main_phase import main_phase
from profileguard.install.run import InstallResult, Recorder, transaction
from profileguard.install.templates import template
from profileguard.installation import schema_version
from profileguard.mapping import columns_used

# Rendering waits this long at most behind an ACCESS EXCLUSIVE lock on a table it describes.
RENDER_LOCK_TIMEOUT_MS = 5000
# What CREATE TRIGGER and ADD FOREIGN KEY take on the tables they touch: a rendered install
# takes it on them at once, so that none of its last statements waits for a lock again.
INSTALL_LOCK_MODE = "share row exclusive"


@contextmanager
def read_only(settings: Settings) -> Iterator[psycopg.Connection]:
    """A read-only transaction that is rolled back, each lock wait capped: rendering reads the
    catalog only (deparsing a table's constraints takes ACCESS SHARE on it, which only ACCESS
    EXCLUSIVE conflicts with); nothing else is locked."""
    with transaction(settings, dry_run=True) as conn:
        conn.execute("set transaction read only")
        conn.execute(f"set local lock_timeout = {RENDER_LOCK_TIMEOUT_MS}")
        yield conn


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
    cron_schedule: str | None = None,
) -> InstallResult:
    """What `install` (or `upgrade`) would run here, rendered without running it, with the
    precondition check and the lock the rendered file needs (see `render_file` in the CLI)."""
    enabled = takeover_enables(enabled, replace_triggers)
    with read_only(settings) as conn:
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
            replace_triggers=replace_triggers,
        )
        result.notes.extend(beside)
        if cron_schedule is not None:
            schedule_sweep(rec, cron_schedule, result)
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
        assert result.plan is not None  # main_phase always plans
        used = columns_used(result.plan)
        result.preconditions = preconditions(
            conn,
            identity=settings.identity,
            profile=settings.profile,
            version=result.version_before,
            identity_columns=used.identity,
            profile_columns=() if result.created_profile_table else used.profile,
            profile_absent=result.created_profile_table,
        )
        if result.identity_statements and result.locked_tables:
            result.identity_lock = lock_block(conn, result.locked_tables, INSTALL_LOCK_MODE)
        return result


def _column_types(conn: psycopg.Connection, ref: TableRef, names: Sequence[str]) -> list[str]:
    """The types of `names` in `ref`, as format_type prints them with only pg_catalog searched
    (as the precondition check compares them)."""
    oid = table_oid(conn, ref)
    row = conn.execute("select current_setting('search_path')").fetchone()
    saved = str(row[0]) if row else "public"
    conn.execute("select set_config('search_path', 'pg_catalog', true)")
    try:
        rows = conn.execute(
            sqlfiles.query("column_types"), {"oid": oid, "names": list(names)}
        ).fetchall()
    finally:
        conn.execute("select set_config('search_path', %s, true)", (saved,))
    found = {str(name): str(kind) for name, kind in rows}
    return [found.get(name, "") for name in names]


def preconditions(
    conn: psycopg.Connection,
    *,
    identity: TableRef,
    profile: TableRef,
    version: int,
    identity_columns: Sequence[str] = (),
    profile_columns: Sequence[str] = (),
    profile_absent: bool = False,
    replaced: Sequence[str] | None = None,
) -> str:
    """The precondition check (render_preconditions.sql): a DO block that stops the rendered
    file, naming every difference, when profileguard's schema version, the types of the given
    columns (as they are now), the profile table's absence or, when `replaced` is given, the
    legacy triggers taken over are not what they are here."""

    def quoted(ref: TableRef) -> sql.Literal:
        return sql.Literal(sql.Identifier(ref.schema, ref.name).as_string(conn))

    def text_array(values: Sequence[sql.Composable]) -> sql.Composable:
        """array[…]::text[], one element a line (a rendered line stays short)."""
        if not values:
            return sql.SQL("array[]::text[]")
        return sql.SQL("array[\n        {}\n    ]::text[]").format(
            sql.SQL(",\n        ").join(values)
        )

    def typed(ref: TableRef, columns: Sequence[str]) -> sql.Composable:
        """The columns with their types, as [column, type] pairs."""
        types = _column_types(conn, ref, columns)
        return text_array(
            [
                sql.SQL("[{}, {}]").format(sql.Literal(c), sql.Literal(t))
                for c, t in zip(columns, types, strict=True)
            ]
        )

    return template(
        "render_preconditions.sql",
        identity=quoted(identity),
        identity_columns=typed(identity, identity_columns),
        profile=quoted(profile),
        profile_columns=typed(profile, profile_columns),
        profile_absent=sql.Literal(profile_absent),
        replaced_table=sql.Literal(str(identity)),
        replaced=sql.SQL("null::text[]")
        if replaced is None
        else text_array([sql.Literal(name) for name in sorted(replaced)]),
        version=sql.Literal(version),
    ).as_string(conn)


def lock_block(conn: psycopg.Connection, tables: Sequence[TableRef], mode: str) -> str:
    """A DO block (render_lock.sql) that locks `tables` in `mode`, each try capped at the
    install's DDL lock timeout, retried with full-jitter pauses for RETRY_FOR_SECONDS at most."""
    return template(
        "render_lock.sql",
        tables=sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in tables),
        names=sql.Literal(
            ", ".join(sql.Identifier(t.schema, t.name).as_string(conn) for t in tables)
        ),
        mode=sql.SQL(mode),
        try_timeout=sql.Literal(f"{DDL_LOCK_TIMEOUT_MS}ms"),
        retry_seconds=_seconds(RETRY_FOR_SECONDS),
        base_seconds=_seconds(BACKOFF_BASE),
        cap_seconds=_seconds(BACKOFF_CAP),
    ).as_string(conn)


def _seconds(value: float) -> sql.Literal:
    return sql.Literal(int(value) if value == int(value) else value)

"""`uninstall`: give back the legacy triggers taken over, then drop the schema; profiles and
users stay. `sql --uninstall` renders the same statements as a file."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.catalog import inspect_table
from profileguard.config import Settings, TableRef
from profileguard.install import takeover
from profileguard.install.locking import short_transaction
from profileguard.install.render import lock_block, preconditions, read_only
from profileguard.install.run import InstallResult, Recorder
from profileguard.installation import Installation, schema_present, schema_version

# What dropping profileguard's triggers (DROP FUNCTION … CASCADE) takes on the identity table:
# a rendered uninstall takes it first, so that none of its statements waits for a lock again.
UNINSTALL_LOCK_MODE = "access exclusive"


def _restore_replaced_triggers(rec: Recorder, identity: TableRef, result: InstallResult) -> None:
    """Give back the legacy triggers `install --replace-trigger` took over: their names go to
    `result.replaced_triggers`, what was done to `result.notes`.

    Each restored trigger's record is deleted in the same transaction, so running this again
    (after a failed uninstall) restores nothing twice.
    """
    conn = rec.conn
    found = conn.execute("select to_regclass('profileguard.replaced_triggers') is not null")
    row = found.fetchone()
    if not (row and row[0]):
        return
    with conn.cursor(row_factory=dict_row) as cur:
        replaced = cur.execute(sqlfiles.query("replaced_triggers")).fetchall()
    for item in replaced:
        if item["table_name"] != str(identity):
            continue
        statement, note = takeover.restore_statement(conn, identity, item)
        if statement is not None:
            rec.run(statement)
        rec.run(
            sql.SQL(
                "delete from profileguard.replaced_triggers where table_name = {}"
                " and trigger_name = {}"
            ).format(sql.Literal(item["table_name"]), sql.Literal(item["trigger_name"]))
        )
        result.replaced_triggers.append(str(item["trigger_name"]))
        result.notes.append(note)


def _give_back(rec: Recorder, settings: Settings, result: InstallResult) -> TableRef | None:
    """The first step: the legacy triggers given back. Returns the identity table profileguard
    is installed for, None when it is not installed."""
    conn = rec.conn
    if not schema_present(conn):
        return None
    installed = Installation.read(conn)
    identity = settings.identity if installed is None else installed.identity
    if inspect_table(conn, identity) is not None:
        _restore_replaced_triggers(rec, identity, result)
    return identity


def _drop(rec: Recorder) -> None:
    """The second step: every profileguard object dropped (its triggers on the identity table
    first, see uninstall.sql)."""
    if schema_present(rec.conn):
        rec.run(sqlfiles.read("uninstall.sql"))


def uninstall(settings: Settings, *, notes: list[str] | None = None) -> bool:
    """Remove every profileguard object; profiles and users stay. False if nothing was there;
    what was given back is appended to `notes`.

    First the legacy triggers `install --replace-trigger` took over get their behaviour back
    (one short transaction), then the schema is dropped (another one: dropping it drops
    profileguard's trigger on the identity table, which locks that table until commit).
    """

    def restore(conn: psycopg.Connection) -> tuple[bool, list[str]]:
        result = InstallResult(0, 0)
        installed = _give_back(Recorder(conn), settings, result) is not None
        return installed, result.notes

    installed, restored = short_transaction(settings, restore, what="uninstall (restore triggers)")
    if notes is not None:
        notes.extend(restored)
    if not installed:
        return False
    short_transaction(settings, lambda conn: _drop(Recorder(conn)), what="uninstall (drop schema)")
    return True


def render_uninstall(settings: Settings) -> InstallResult:
    """What `uninstall` would run here, rendered without running it (`sql --uninstall`): both
    steps in one file, the precondition check (schema version, triggers taken over) and the
    retried lock on the identity table first. `changed` is False when nothing is installed."""
    with read_only(settings) as conn:
        version = schema_version(conn)
        result = InstallResult(version, 0)
        rec = Recorder(conn, execute=False)
        identity = _give_back(rec, settings, result)
        if identity is None:
            return result
        _drop(rec)
        result.changed = True
        result.statements = rec.statements
        result.identity_statements = len(rec.statements)
        result.locked_tables = [identity]
        result.preconditions = preconditions(
            conn,
            identity=identity,
            profile=settings.profile,
            version=version,
            replaced=result.replaced_triggers,
        )
        result.identity_lock = lock_block(conn, [identity], UNINSTALL_LOCK_MODE)
        return result

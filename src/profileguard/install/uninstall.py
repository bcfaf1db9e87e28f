"""`uninstall`: give back the legacy triggers taken over, then drop the schema; profiles and
users stay."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.catalog import inspect_table
from profileguard.config import Settings, TableRef
from profileguard.install import takeover
from profileguard.install.locking import short_transaction
from profileguard.installation import Installation, schema_present


def _restore_replaced_triggers(conn: psycopg.Connection, identity: TableRef) -> list[str]:
    """Give back the legacy triggers `install --replace-trigger` took over; returns notes.

    Each restored trigger's record is deleted in the same transaction, so running this again
    (after a failed uninstall) restores nothing twice.
    """
    found = conn.execute("select to_regclass('profileguard.replaced_triggers') is not null")
    row = found.fetchone()
    if not (row and row[0]):
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        replaced = cur.execute(sqlfiles.query("replaced_triggers")).fetchall()
    notes = []
    for item in replaced:
        if item["table_name"] != str(identity):
            continue
        statement, note = takeover.restore_statement(conn, identity, item)
        if statement is not None:
            conn.execute(statement)
        conn.execute(
            "delete from profileguard.replaced_triggers where table_name = %s"
            " and trigger_name = %s",
            (item["table_name"], item["trigger_name"]),
        )
        notes.append(note)
    return notes


def uninstall(settings: Settings, *, notes: list[str] | None = None) -> bool:
    """Remove every profileguard object; profiles and users stay. False if nothing was there;
    what was given back is appended to `notes`.

    First the legacy triggers `install --replace-trigger` took over get their behaviour back
    (one short transaction), then the schema is dropped (another one: dropping it drops
    profileguard's trigger on the identity table, which locks that table until commit).
    """

    def restore(conn: psycopg.Connection) -> tuple[bool, list[str]]:
        if not schema_present(conn):
            return False, []
        installed = Installation.read(conn)
        identity = settings.identity if installed is None else installed.identity
        if inspect_table(conn, identity) is None:
            return True, []
        return True, _restore_replaced_triggers(conn, identity)

    installed, restored = short_transaction(settings, restore, what="uninstall (restore triggers)")
    if notes is not None:
        notes.extend(restored)
    if not installed:
        return False

    def drop(conn: psycopg.Connection) -> None:
        if schema_present(conn):
            conn.execute(sqlfiles.read("uninstall.sql"))

    short_transaction(settings, drop, what="uninstall (drop schema)")
    return True

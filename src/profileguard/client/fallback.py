"""The direct path: `INSERT … ON CONFLICT DO NOTHING` built from the mapping, used when
profileguard.ensure_profile() is missing or PROFILEGUARD_ENABLED is off."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import psycopg
from psycopg import sql

from profileguard.config import Settings
from profileguard.db import connect
from profileguard.mapping import build_plan, insert_statement


@dataclass(frozen=True)
class Fallback:
    """SQL of the direct path, built once from the mapping and the catalog."""

    exists: sql.Composed
    insert: sql.SQL
    insert_forced: sql.SQL
    select: sql.Composed


def fallback_sql(conn: psycopg.Connection, settings: Settings) -> Fallback:
    """Build the statements on `conn` (reads the catalog)."""
    plan = build_plan(conn, settings)
    identity = sql.Identifier(settings.identity.schema, settings.identity.name)
    where = sql.SQL("where u.{} = %(uid)s").format(sql.Identifier(settings.identity.key))
    # The INSERT holds text from the catalog and the configuration (CHECK expressions, patterns,
    # JSON keys) that may contain '%': escape it, then put the one parameter back.
    sentinel = sql.SQL("where u.{} = pg_uid_parameter").format(
        sql.Identifier(settings.identity.key)
    )

    def with_parameter(statement: sql.Composed) -> sql.SQL:
        text = statement.as_string(conn).replace("%", "%%")
        return sql.SQL(text.replace("pg_uid_parameter", "%(uid)s"))

    return Fallback(
        exists=sql.SQL("select exists (select from {} u {}) as found").format(identity, where),
        insert=with_parameter(insert_statement(plan, source=identity, where=sentinel)),
        insert_forced=with_parameter(
            insert_statement(plan, source=identity, where=sentinel, force_suffix=True)
        ),
        select=sql.SQL("select to_jsonb(p) as profile from {} p where p.{} = %(uid)s").format(
            sql.Identifier(settings.profile.schema, settings.profile.name),
            sql.Identifier(settings.profile.key),
        ),
    )


async def fallback_sql_async(conn: psycopg.AsyncConnection, settings: Settings) -> Fallback:
    """The async client's fallback_sql(): the plan reads the catalog through a blocking
    connection, so the statements are built on a short-lived one of their own, in a thread.

    `conn` is not used; it is there so that `tools/async_to_sync.py` maps this call to
    `fallback_sql(conn, settings)`, which reads the catalog on the caller's connection.
    """
    return await asyncio.to_thread(fallback_sql_standalone, settings)


def fallback_sql_standalone(settings: Settings) -> Fallback:
    """Build the fallback SQL on a short-lived connection of its own (for the async client)."""
    with connect(settings) as conn:
        return fallback_sql(conn, settings)

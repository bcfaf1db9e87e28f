"""Where a benchmark runs: an embedded PostgreSQL, or a scratch database on a given server."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from profileguard.embedded import EmbeddedPostgres

SUPABASE_ROLES = ("anon", "authenticated", "service_role", "authenticator", "supabase_auth_admin")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch_database(url: str, name: str) -> Iterator[str]:
    """A fresh database `name` on the server at `url`, dropped afterwards."""
    drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
    role_query = "select rolname from pg_roles where rolname = any(%s)"
    with psycopg.connect(url, autocommit=True) as admin:
        before = {r[0] for r in admin.execute(role_query, (list(SUPABASE_ROLES),)).fetchall()}
        admin.execute(drop)
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(url, dbname=name)
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(drop)
            # The Supabase roles are cluster-wide: drop the ones this run created.
            after = {r[0] for r in admin.execute(role_query, (list(SUPABASE_ROLES),)).fetchall()}
            for role in sorted(after - before, key=SUPABASE_ROLES.index, reverse=True):
                try:
                    admin.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
                except psycopg.Error as exc:
                    log(f"WARNING: could not drop role {role}: {exc}")


@contextlib.contextmanager
def database(url: str | None, name: str) -> Iterator[tuple[str, str]]:
    """(connection string, description) of the database to benchmark in."""
    if url:
        info = conninfo_to_dict(url)
        where = f"{info.get('host', 'local')}:{info.get('port', 5432)}/{name}"
        with scratch_database(url, name) as scratch:
            yield scratch, where
    else:
        log("starting an embedded PostgreSQL…")
        with EmbeddedPostgres() as pg:
            yield pg.uri(), "embedded"

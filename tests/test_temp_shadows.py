"""A caller's temporary objects never run as the role that installed profileguard.

PostgreSQL searches `pg_temp` first for types and relations unless the search_path lists it
explicitly: with `search_path = ''` an unqualified `text` inside a SECURITY DEFINER function would
resolve to a `pg_temp.text` domain of the caller's, whose CHECK then runs as the function's owner.
Any role that can fire the triggers (Supabase Auth's `supabase_auth_admin`) or call a function
(members of `service_role`) can create temporary objects. Here both plant a shadow for every type
and relation name in reach — domains over every pg_catalog type, views named like every catalog,
profileguard, auth and profile table, functions named like common built-ins — each calling a witness
that counts the calls made as the installer. Then they sign up, update, delete and ensure profiles.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import psycopg
import pytest
from conftest import INSTALLERS, TestDB
from psycopg import sql
from psycopg.conninfo import make_conninfo

from profileguard.install import install

# Counts witness calls made as the installer; public so that any role can advance it.
HITS = "public.temp_shadow_hits"
FUNCTIONS = (
    "now()",
    "lower(pg_catalog.text)",
    "btrim(pg_catalog.text)",
    "format(pg_catalog.text)",
    "gen_random_uuid()",
    "nextval(pg_catalog.regclass)",
    "jsonb_typeof(pg_catalog.jsonb)",
    "current_setting(pg_catalog.text)",
    "set_config(pg_catalog.text, pg_catalog.text, boolean)",
)


def _plant(conn: psycopg.Connection, installer_role: str) -> int:
    """Create the shadows in this session's temporary schema; returns how many were created."""
    conn.execute(
        sql.SQL(
            "create function pg_temp.witness() returns boolean language plpgsql"
            " set search_path = pg_catalog, pg_temp as $w$"
            " begin if current_user = {} then perform pg_catalog.nextval({}); end if;"
            " return true; end $w$"
        ).format(sql.Literal(installer_role), sql.Literal(HITS))
    )
    types = [
        r[0]
        for r in conn.execute(
            "select t.typname from pg_catalog.pg_type t"
            " where t.typnamespace = 'pg_catalog'::regnamespace"
            " and t.typtype in ('b', 'e', 'r', 'm')"
            " and t.typname !~ '^_' order by 1"
        )
    ]
    relations = [
        r[0]
        for r in conn.execute(
            "select distinct c.relname from pg_catalog.pg_class c"
            " where c.relkind in ('r', 'v', 'p', 'm', 'f')"
            " and c.relnamespace in ('pg_catalog'::regnamespace, 'profileguard'::regnamespace,"
            "                        'auth'::regnamespace, 'public'::regnamespace) order by 1"
        )
    ]
    created = 0
    for name in types:
        created += _try(
            conn,
            sql.SQL(
                "create domain pg_temp.{name} as pg_catalog.{name} check (pg_temp.witness())"
            ).format(name=sql.Identifier(name)),
        )
    for name in relations:
        created += _try(
            conn,
            sql.SQL("create view pg_temp.{} as select pg_temp.witness() as shadow").format(
                sql.Identifier(name)
            ),
        )
    for signature in FUNCTIONS:
        name, _, args = signature.partition("(")
        params = ", ".join(f"a{i} {t.strip()}" for i, t in enumerate(args[:-1].split(",")) if t)
        created += _try(
            conn,
            sql.SQL(
                "create function pg_temp.{}({}) returns boolean language sql"
                " as 'select pg_temp.witness()'"
            ).format(sql.Identifier(name), sql.SQL(params)),
        )
    return created


def _try(conn: psycopg.Connection, statement: sql.Composable) -> int:
    """Run `statement` in a savepoint; 1 when it succeeded (some catalog types take no domain)."""
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.Error:
        return 0
    return 1


def _hits(db: TestDB) -> int:
    with db.connect_admin() as conn:
        row = conn.execute(
            sql.SQL("select last_value - 1 from {}").format(sql.SQL(HITS))
        ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("installer", INSTALLERS, indirect=True)
def test_temporary_shadows_never_run_as_the_installer(db: TestDB) -> None:
    # full_name follows metadata updates: the update below takes the sync path.
    install(replace(db.settings, sync_policies={"full_name": "follow"}), create_profile_table=True)
    installer_role = db.role
    with db.connect_admin() as admin:
        admin.execute(sql.SQL("create sequence {} minvalue 0 start 1").format(sql.SQL(HITS)))
        admin.execute(sql.SQL("select nextval({})").format(sql.Literal(HITS)))
        admin.execute(sql.SQL("grant usage, update on sequence {} to public").format(sql.SQL(HITS)))
        bulk = [uuid.uuid4() for _ in range(3)]

    # Supabase Auth's role: no rights on profileguard, search_path = auth.
    auth_url = make_conninfo(db.admin_url, user="supabase_auth_admin")
    with psycopg.connect(auth_url, autocommit=True) as auth:
        assert _plant(auth, installer_role) > 150
        # The shadows resolve in the caller's own session: pg_temp is searched first.
        assert auth.execute("select 'x'::text").fetchone() == ("x",)
        signed_up = [
            db.signup(
                {"full_name": f"Shadow {i}", "user_name": f"shadow{i}"},
                email=f"shadow{i}@example.com",
                conn=auth,
            )
            for i in range(3)
        ]
        auth.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " select i, 'authenticated', 'authenticated', i || '@example.com',"
            " jsonb_build_object('full_name', 'Bulk ' || i), now() from unnest(%s::uuid[]) i",
            (bulk,),
        )
        auth.execute(
            "update auth.users set raw_user_meta_data = raw_user_meta_data"
            ' || \'{"full_name": "Renamed"}\' where id = %s',
            (signed_up[0],),
        )
        auth.execute("delete from auth.users where id = %s", (signed_up[2],))
    users = signed_up[:2] + bulk
    assert _hits(db) == 0
    followed = db.scalar("select full_name from public.profiles where id = %s", (signed_up[0],))
    assert followed == "Renamed"

    # A member of service_role, the one client role that may call ensure_profile.
    with db.connect_admin() as admin:
        admin.execute("delete from public.profiles where id = any(%s)", (users,))
    with db.connect_admin() as service:
        service.execute("set role service_role")
        assert _plant(service, installer_role) > 150
        for user in users:
            service.execute("select profileguard.ensure_profile(%s)", (user,))
    assert _hits(db) == 0

    with db.connect_admin() as admin:
        names = dict(
            admin.execute(
                "select id, full_name from public.profiles where id = any(%s)", (users,)
            ).fetchall()
        )
        failures = admin.execute("select count(*) from profileguard.failures").fetchone()
        gone = admin.execute(
            "select count(*) from public.profiles where id = %s", (signed_up[2],)
        ).fetchone()
    assert set(names) == set(users)
    assert failures == (0,)
    assert gone == (0,)

"""Security of everything profileguard installs, seen from Supabase's client roles.

Roles anon and authenticated come from the fixture (as Supabase creates them); a signed-in
request is emulated as PostgREST does it: `set role authenticated` and the JWT claims in
`request.jwt.claims`, which `auth.uid()` reads.
"""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from conftest import TestDB
from psycopg import sql
from psycopg.conninfo import make_conninfo
from test_audit import apply_fix, audit, one
from test_cli import cli

from profileguard.config import load_settings
from profileguard.errors import ConfigError
from profileguard.install import install, uninstall

CLIENT_ROLES = ("anon", "authenticated")
PAYLOADS = (
    "'; drop table public.profiles; --",
    '"; drop table auth.users; --',
    "$pg$; delete from auth.users; $pg$",
    "x') on conflict do nothing; truncate profileguard.events; --",
)


@contextmanager
def as_client(db: TestDB, role: str, sub: uuid.UUID | None = None) -> Iterator[psycopg.Connection]:
    """A transaction as `role`, with the JWT claims PostgREST would set for user `sub`."""
    with db.connect(autocommit=False) as conn:
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        if sub is not None:
            conn.execute(
                "select set_config('request.jwt.claims',"
                " json_build_object('sub', %s::text, 'role', %s::text)::text, true)",
                (sub, role),
            )
        try:
            yield conn
        finally:
            conn.rollback()


def denied(
    db: TestDB, role: str, statement: str | sql.Composable, sub: uuid.UUID | None = None
) -> bool:
    """True when `statement` run as `role` fails with permission denied (42501)."""
    with as_client(db, role, sub) as conn:
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def test_auth_uid_reads_the_jwt_claims_as_supabase_does(installed: TestDB) -> None:
    user = uuid.uuid4()
    with as_client(installed, "authenticated", user) as conn:
        row = conn.execute("select auth.uid(), auth.role(), current_user").fetchone()
        assert row == (user, "authenticated", "authenticated")
    with as_client(installed, "anon") as conn:
        assert conn.execute("select auth.uid()").fetchone() == (None,)


def _functions(db: TestDB) -> list[tuple[str, list[str]]]:
    with db.connect() as conn:
        rows = conn.execute(
            "select p.oid::regprocedure::text,"
            " array(select format_type(t, null) from unnest(p.proargtypes::oid[]) t)"
            " from pg_proc p where p.pronamespace = 'profileguard'::regnamespace order by 1"
        ).fetchall()
    return [(str(r[0]), list(r[1])) for r in rows]


@pytest.mark.parametrize("role", CLIENT_ROLES)
def test_clients_cannot_execute_any_profileguard_function(installed: TestDB, role: str) -> None:
    functions = _functions(installed)
    names = {f.split("(")[0] for f, _ in functions}
    assert {
        "profileguard.ensure_profile",
        "profileguard.create_profiles",
        "profileguard.record_failure",
        "profileguard.on_identity_insert",
    } <= names
    user = installed.signup({"full_name": "Target"})
    for signature, args in functions:
        name = signature.split("(")[0]
        call = sql.SQL("select {}({})").format(
            sql.SQL(name),
            sql.SQL(", ").join(sql.SQL("null::{}").format(sql.SQL(a)) for a in args),
        )
        assert denied(installed, role, call, user), signature
        assert (
            installed.scalar(
                "select has_function_privilege(%s, %s::regprocedure, 'execute')", (role, signature)
            )
            is False
        ), signature
    # The targeted user's profile was created by the trigger, not by any of those calls.
    assert installed.scalar("select count(*) from profileguard.events where kind = 'repair'") == 0


@pytest.mark.parametrize("role", CLIENT_ROLES)
def test_clients_cannot_read_or_write_profileguard_state(installed: TestDB, role: str) -> None:
    with installed.connect() as conn:
        relations = [
            str(r[0])
            for r in conn.execute(
                "select oid::regclass::text from pg_class"
                " where relnamespace = 'profileguard'::regnamespace and relkind in ('r', 'v')"
                " order by 1"
            )
        ]
    assert {
        "profileguard.settings",
        "profileguard.events",
        "profileguard.failures",
        "profileguard.repair_state",
        "profileguard.workers",
        "profileguard.replaced_triggers",
    } <= set(relations)
    user = uuid.uuid4()
    for relation in relations:
        target = sql.SQL(relation)
        for statement in (
            sql.SQL("select * from {}").format(target),
            sql.SQL("insert into {} default values").format(target),
            sql.SQL("update {} set {} = {}").format(target, sql.SQL("created_at"), sql.SQL("now()"))
            if relation in ("profileguard.events", "profileguard.failures")
            else sql.SQL("delete from {}").format(target),
            sql.SQL("truncate {}").format(target),
        ):
            assert denied(installed, role, statement, user), (relation, statement)
    enabled = installed.scalar("select enabled from profileguard.settings")
    assert enabled is True


OWNER_ONLY = """
    select c.oid::regclass::text, c.relrowsecurity,
           array(select row(p.polpermissive, p.polcmd, p.polroles::regrole[]::text[],
                            pg_get_expr(p.polqual, p.polrelid),
                            pg_get_expr(p.polwithcheck, p.polrelid))::text
                 from pg_policy p where p.polrelid = c.oid and p.polname = 'owner_only')
    from pg_class c
    where c.relnamespace = 'profileguard'::regnamespace and c.relkind in ('r', 'p')
    order by 1
"""
# RLS on, and one restrictive policy for every command and role that lets nothing through.
SEALED = (True, ["(f,*,{-},false,false)"])


def owner_only(db: TestDB) -> dict[str, tuple[bool, list[str]]]:
    """Each profileguard table: RLS on?, and its owner_only policy (permissive, command, roles,
    USING, WITH CHECK)."""
    with db.connect() as conn:
        return {str(r[0]): (r[1], list(r[2])) for r in conn.execute(OWNER_ONLY)}


def test_every_profileguard_table_is_for_its_owner_only(installed: TestDB) -> None:
    tables = owner_only(installed)
    assert {"profileguard.settings", "profileguard.events", "profileguard.migrations"} <= set(
        tables
    )
    assert {t: v for t, v in tables.items() if v != SEALED} == {}
    # Even a table granted to a client by mistake, with a permissive policy, shows it nothing.
    user = installed.signup({"full_name": "Someone"})
    assert installed.scalar("select count(*) from profileguard.settings") == 1
    with installed.connect() as conn:
        conn.execute("grant select, insert on profileguard.settings to authenticated")
        conn.execute("grant usage on schema profileguard to authenticated")
        conn.execute(
            "create policy everyone on profileguard.settings for all to authenticated"
            " using (true) with check (true)"
        )
    with as_client(installed, "authenticated", user) as conn:
        assert conn.execute("select count(*) from profileguard.settings").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("insert into profileguard.settings default values")


def test_reinstall_takes_no_lock_on_profileguard_tables(installed: TestDB) -> None:
    """The trigger and the worker keep writing profileguard's tables while it is re-installed:
    the policies already there are left alone (an install that altered a table would wait for
    the writer below and fail on its lock_timeout). Not settings: only profileguard's commands
    write it, and install re-creates its trigger."""
    with installed.connect() as conn:
        tables = [str(r[0]) for r in conn.execute(OWNER_ONLY)]
    tables.remove("profileguard.settings")
    with installed.connect(autocommit=False) as writer:
        writer.execute(
            sql.SQL("lock table {} in row exclusive mode").format(
                sql.SQL(", ").join(sql.SQL(t) for t in tables)
            )
        )
        url = make_conninfo(installed.url, options="-c lock_timeout=5s")
        install(load_settings(env={}, database_url=url), create_profile_table=True)
        writer.rollback()
    assert all(v == SEALED for v in owner_only(installed).values())


def test_signed_in_user_reads_and_updates_only_their_own_profile(installed: TestDB) -> None:
    alice = installed.signup({"full_name": "Alice"}, email="alice@example.com")
    bob = installed.signup({"full_name": "Bob"}, email="bob@example.com")
    with as_client(installed, "authenticated", alice) as conn:
        rows = conn.execute("select id, full_name from public.profiles").fetchall()
        assert rows == [(alice, "Alice")]
        updated = conn.execute("update public.profiles set full_name = 'Mallory'")
        assert updated.rowcount == 1
        assert (
            conn.execute(
                "update public.profiles set full_name = 'x' where id = %s", (bob,)
            ).rowcount
            == 0
        )
        conn.commit()
    assert installed.scalar("select full_name from public.profiles where id = %s", (bob,)) == "Bob"
    assert (
        installed.scalar("select full_name from public.profiles where id = %s", (alice,))
        == "Mallory"
    )

    # Taking over another id is refused by the policy's WITH CHECK.
    assert denied(
        installed,
        "authenticated",
        sql.SQL("update public.profiles set id = {} where id = {}").format(
            sql.Literal(str(uuid.uuid4())), sql.Literal(str(alice))
        ),
        alice,
    )
    assert denied(
        installed,
        "authenticated",
        sql.SQL("insert into public.profiles (id) values ({})").format(sql.Literal(str(alice))),
        alice,
    )
    assert denied(installed, "authenticated", "delete from public.profiles", alice)
    # No claims: signed-in role but no user → sees nothing.
    with as_client(installed, "authenticated") as conn:
        assert conn.execute("select count(*) from public.profiles").fetchone() == (0,)
    # anon has no access to profiles at all.
    assert denied(installed, "anon", "select * from public.profiles")
    # auth.users stays out of reach.
    assert denied(installed, "authenticated", "select * from auth.users", alice)


def test_hostile_config_identifiers_are_rejected_before_any_sql(db: TestDB) -> None:
    for payload in PAYLOADS:
        for variable in (
            "PROFILEGUARD_PROFILE_TABLE",
            "PROFILEGUARD_IDENTITY_TABLE",
            "PROFILEGUARD_PROFILE_KEY",
            "PROFILEGUARD_IDENTITY_KEY",
        ):
            with pytest.raises(ConfigError):
                load_settings(env={variable: payload}, database_url=db.url)
        result = cli(
            db, "install", "--create-profile-table", env={"PROFILEGUARD_PROFILE_TABLE": payload}
        )
        assert result.returncode == 2, result.stderr
    assert db.scalar("select to_regclass('auth.users') is not null") is True
    assert db.scalar("select count(*) from pg_namespace where nspname = 'profileguard'") == 0


def test_unusual_but_valid_identifiers_are_quoted(db: TestDB) -> None:
    settings = load_settings(
        env={"PROFILEGUARD_PROFILE_TABLE": "public.UserProfiles"}, database_url=db.url
    )
    install(settings, create_profile_table=True)
    assert db.scalar("""select to_regclass('public."UserProfiles"') is not null""") is True
    uid = db.signup({"full_name": "Quoted"})
    assert (
        db.scalar('select full_name from public."UserProfiles" where id = %s', (uid,)) == "Quoted"
    )


def test_hostile_trigger_name_is_inert_in_audit_and_replace_trigger(db: TestDB) -> None:
    name = 'evil"; drop table auth.users; --'
    with db.connect() as conn:
        conn.execute(
            "create table public.profiles (id uuid primary key references auth.users"
            " on delete cascade, full_name text)"
        )
        conn.execute(
            "create function public.evil() returns trigger language plpgsql security definer"
            " set search_path = '' as $$ begin insert into public.profiles (id)"
            " values (new.id); return new; end $$"
        )
        conn.execute(
            sql.SQL(
                "create trigger {} after insert on auth.users for each row"
                " execute function public.evil()"
            ).format(sql.Identifier(name))
        )
    competing = one(audit(db), "competing_trigger")
    assert competing.evidence["trigger"] == name
    assert competing.fix == f"profileguard install --replace-trigger {shlex.quote(name)}"
    with pytest.raises(ConfigError):
        install(db.settings, replace_triggers=["x; drop table auth.users"])
    apply_fix(db, competing)
    body = "select prosrc from pg_proc where proname = 'evil'"
    assert "insert into" not in db.scalar(body)  # taken over: the function is a no-op
    assert db.scalar("select to_regclass('auth.users') is not null") is True
    assert uninstall(db.settings) is True
    assert db.scalar("select tgenabled from pg_trigger where tgname = %s", (name,)) == "O"
    assert "insert into public.profiles" in db.scalar(body)


def test_hostile_metadata_is_inert_in_audit_and_its_fix(db: TestDB) -> None:
    install(db.settings, create_profile_table=True, enabled=False)
    ids = []
    for index, payload in enumerate(PAYLOADS):
        meta: dict[str, Any] = {"full_name": payload, "user_name": payload, "avatar_url": payload}
        ids.append(db.signup(meta, email=f"{index}{payload}@example.com"))
    report = audit(db)
    missing = one(report, "missing_profiles")
    assert missing.evidence["count"] == len(PAYLOADS)
    json.dumps(report.as_dict(), default=str)
    apply_fix(db, missing)
    for uid, payload in zip(ids, PAYLOADS, strict=True):
        assert db.scalar("select full_name from public.profiles where id = %s", (uid,)) == payload
    assert db.scalar("select count(*) from auth.users") == len(PAYLOADS)
    assert db.scalar("select count(*) from profileguard.events") > 0


SUPABASE_DEFAULT_PRIVILEGES = (
    "alter default privileges in schema public"
    " grant all on tables to anon, authenticated, service_role"
)
NOOP_TRIGGER_FUNCTION = (
    "create function public.noop_trigger() returns trigger language plpgsql"
    " as $$ begin return null; end $$"
)


def _server_version(db: TestDB) -> int:
    return int(db.scalar("select current_setting('server_version_num')"))


@pytest.mark.parametrize("role", CLIENT_ROLES)
def test_created_profile_table_ignores_supabase_default_privileges(db: TestDB, role: str) -> None:
    with db.connect() as conn:
        conn.execute(SUPABASE_DEFAULT_PRIVILEGES)
        conn.execute(NOOP_TRIGGER_FUNCTION)  # executable by PUBLIC, as functions are by default
    install(db.settings, create_profile_table=True)
    alice = db.signup({"full_name": "Alice"}, email="alice@example.com")
    bob = db.signup({"full_name": "Bob"}, email="bob@example.com")
    # The default privileges were live: a table created alongside still gets ALL.
    with db.connect() as conn:
        conn.execute("create table public.other (id int)")
    assert db.scalar("select has_table_privilege(%s, 'public.other', 'TRUNCATE')", (role,))

    for statement in (
        "truncate public.profiles",
        "create trigger planted before update on public.profiles"
        " for each row execute function public.noop_trigger()",
        "delete from public.profiles",
        sql.SQL("delete from public.profiles where id = {}").format(sql.Literal(str(bob))),
        sql.SQL("insert into public.profiles (id, full_name) values ({}, 'x')").format(
            sql.Literal(str(uuid.uuid4()))
        ),
        sql.SQL("insert into public.profiles (id) values ({}) on conflict do nothing").format(
            sql.Literal(str(bob))
        ),
        "alter table public.profiles disable row level security",
        sql.SQL("update public.profiles set created_at = now() where id = {}").format(
            sql.Literal(str(alice))
        ),
        sql.SQL("update public.profiles set id = {} where id = {}").format(
            sql.Literal(str(uuid.uuid4())), sql.Literal(str(alice))
        ),
    ):
        assert denied(db, role, statement, alice), statement
    if _server_version(db) >= 170000:  # MAINTAIN (LOCK TABLE, VACUUM, …) is part of ALL there
        assert denied(db, role, "lock table public.profiles in access exclusive mode", alice)
    for privilege in ("TRUNCATE", "TRIGGER", "REFERENCES", "INSERT", "DELETE"):
        assert (
            db.scalar("select has_table_privilege(%s, 'public.profiles', %s)", (role, privilege))
            is False
        ), privilege
    assert db.scalar("select count(*) from public.profiles") == 2
    assert (
        db.scalar(
            "select count(*) from pg_trigger"
            " where tgrelid = 'public.profiles'::regclass and not tgisinternal"
        )
        == 0
    )


def test_created_profile_table_grants_exactly_what_clients_need(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(SUPABASE_DEFAULT_PRIVILEGES)
    install(db.settings, create_profile_table=True)
    alice = db.signup({"full_name": "Alice"}, email="alice@example.com")
    with as_client(db, "authenticated", alice) as conn:
        conn.execute(
            "update public.profiles set full_name = 'A',"
            " avatar_url = 'https://example.com/a.png', updated_at = now()"
        )
        assert conn.execute("select full_name, avatar_url from public.profiles").fetchall() == [
            ("A", "https://example.com/a.png")
        ]
    # The username is not the client's to write: the policy would be skipped.
    for name in ("admin", "torvalds", "\u202eevil\u200b", "x\x07y", "n" * 5000):
        assert denied(
            db,
            "authenticated",
            sql.SQL("update public.profiles set username = {}").format(sql.Literal(name)),
            alice,
        )
    assert db.scalar("select username from public.profiles where id = %s", (alice,)) is None
    with db.connect() as conn:
        grants = conn.execute(
            "select a.grantee::regrole::text, a.privilege_type"
            " from pg_class c, aclexplode(c.relacl) a"
            " where c.oid = 'public.profiles'::regclass and a.grantee <> c.relowner"
            " order by 1, 2"
        ).fetchall()
        columns = conn.execute(
            "select grantee, column_name, privilege_type"
            " from information_schema.column_privileges"
            " where table_schema = 'public' and table_name = 'profiles'"
            " and grantee = 'authenticated' and privilege_type = 'UPDATE' order by 2"
        ).fetchall()
    assert grants == [
        ("authenticated", "SELECT"),
        ("service_role", "DELETE"),
        ("service_role", "INSERT"),
        ("service_role", "SELECT"),
        ("service_role", "UPDATE"),
    ]
    assert [c[1] for c in columns] == ["avatar_url", "full_name", "updated_at"]
    # service_role (the server's key) writes rows but cannot truncate or plant triggers.
    with as_client(db, "service_role") as conn:
        conn.execute("update public.profiles set full_name = 'Server' where id = %s", (alice,))
    assert denied(db, "service_role", "truncate public.profiles")


def test_created_profile_table_grants_without_default_privileges(db: TestDB) -> None:
    """Where new public tables get no API grants (Supabase from 30 Oct 2026), clients still get
    their own-row read and update."""
    with db.connect() as conn:
        conn.execute(
            "alter default privileges in schema public"
            " revoke all on tables from public, anon, authenticated, service_role"
        )
    install(db.settings, create_profile_table=True)
    alice = db.signup({"full_name": "Alice"}, email="alice@example.com")
    with as_client(db, "authenticated", alice) as conn:
        assert conn.execute("select full_name from public.profiles").fetchall() == [("Alice",)]
        assert conn.execute("update public.profiles set full_name = 'A'").rowcount == 1
    assert denied(db, "anon", "select * from public.profiles")


def test_username_update_granted_by_an_earlier_version_is_flagged_and_the_fix_clears_it(
    db: TestDB,
) -> None:
    """A table made by an earlier `install --create-profile-table` granted authenticated UPDATE
    on username: audit warns, and its fix leaves the other columns writable."""
    install(db.settings, create_profile_table=True)
    assert not findings_of(audit(db), "username_update_grant")
    with db.connect() as conn:
        conn.execute("grant update (username) on public.profiles to authenticated")
    alice = db.signup({"full_name": "Alice"}, email="alice@example.com")
    finding = one(audit(db), "username_update_grant")
    assert finding.severity == "warning"
    assert finding.fix == (
        'revoke update ("username") on table "public"."profiles" from "authenticated";'
    )
    apply_fix(db, finding)
    assert not findings_of(audit(db), "username_update_grant")
    assert denied(db, "authenticated", "update public.profiles set username = 'admin'", alice)
    with as_client(db, "authenticated", alice) as conn:
        assert conn.execute("update public.profiles set full_name = 'A'").rowcount == 1


def findings_of(report: Any, code: str) -> list[Any]:
    return [f for f in report.findings if f.code == code]

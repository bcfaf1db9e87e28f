"""Taking over from a legacy profile trigger and giving it back, as a role that does not own
auth.users (hosted Supabase's `postgres`) as well as a superuser; and how long logins wait."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace

import psycopg
import pytest
from conftest import TestDB, wait_for
from psycopg import sql
from test_cli import cli

from profileguard.config import Source
from profileguard.errors import ConfigError
from profileguard.install import install, uninstall

PROFILES = """
create table public.profiles (
  id uuid not null references auth.users on delete cascade primary key,
  full_name text
);
alter table public.profiles enable row level security;
"""

# The documented handle_new_user, except that 1 sign-up in 10 fails in it (the sequence is not
# rolled back with the sign-up, so exactly every tenth call fails).
FLAKY_LEGACY = """
create sequence public.legacy_calls;
create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  if nextval('public.legacy_calls') % 10 = 0 then
    raise exception 'legacy profile trigger failed' using errcode = '23514';
  end if;
  insert into public.profiles (id, full_name)
  values (new.id, new.raw_user_meta_data ->> 'full_name');
  return new;
end;
$$;
create trigger on_auth_user_created after insert on auth.users
  for each row execute procedure public.handle_new_user();
"""


def signups_as_auth(db: TestDB, count: int) -> tuple[list[uuid.UUID], int]:
    """`count` sign-ups as Supabase Auth makes them (its role, search_path auth, one transaction
    each: insert, then update the role); returns the users created and how many failed."""
    created, failed = [], 0
    with db.connect_admin() as conn:
        conn.execute("set role supabase_auth_admin")
        conn.execute("set search_path = auth")
        for n in range(count):
            uid = uuid.uuid4()
            try:
                with conn.transaction():
                    conn.execute(
                        "insert into users (id, aud, role, email, raw_user_meta_data)"
                        " values (%s, 'authenticated', '', %s, %s)",
                        (uid, f"{uid}@example.com", json.dumps({"full_name": f"User {n}"})),
                    )
                    conn.execute("update users set role = 'authenticated' where id = %s", (uid,))
                created.append(uid)
            except psycopg.errors.CheckViolation:
                failed += 1
    return created, failed


def function_source(db: TestDB, name: str) -> str:
    return str(db.scalar("select prosrc from pg_proc where proname = %s", (name,)))


def trigger_definition(db: TestDB, name: str) -> str:
    return str(
        db.scalar("select pg_get_triggerdef(oid) from pg_trigger where tgname = %s", (name,))
    )


def test_takeover_fixes_failing_signups_and_uninstall_gives_the_legacy_trigger_back(
    db: TestDB,
) -> None:
    with db.connect() as conn:
        conn.execute(PROFILES)
        conn.execute(FLAKY_LEGACY)
    original = function_source(db, "handle_new_user")
    trigger = trigger_definition(db, "on_auth_user_created")
    before, failed = signups_as_auth(db, 100)
    assert failed == 10

    taken = cli(db, "install", "--replace-trigger", "on_auth_user_created", "--json")
    assert taken.returncode == 0, taken.stderr
    result = json.loads(taken.stdout)
    assert result["replaced_triggers"] == ["on_auth_user_created"]
    assert any("no-op" in note for note in result["notes"])  # the installer owns the function
    assert db.scalar("select method from profileguard.replaced_triggers") == "function"
    during, failed = signups_as_auth(db, 1000)
    assert failed == 0
    assert db.scalar("select count(*) from public.profiles where id = any(%s)", (during,)) == 1000
    assert db.scalar("select count(*) from profileguard.failures") == 0

    removed = cli(db, "uninstall", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "restored the body of public.handle_new_user()" in removed.stdout
    assert function_source(db, "handle_new_user") == original
    assert trigger_definition(db, "on_auth_user_created") == trigger
    after, failed = signups_as_auth(db, 100)
    assert failed == 10  # exactly as before: the legacy trigger is back
    assert db.scalar("select count(*) from public.profiles") == len(before + during + after)
    assert db.scalar("select to_regnamespace('profileguard')") is None


# A legacy trigger with the parts a rebuilt definition could lose: a hostile name, two events,
# a column list, arguments with a quote.
ODD_NAME = 'legacy "profiles"; --'
ODD_LEGACY = """
create table public.legacy_log (id uuid, args text[]);
grant select on public.legacy_log to public;
create function public.legacy_profile() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into public.legacy_log values (new.id, tg_argv);
  insert into public.profiles (id, full_name)
  values (new.id, new.raw_user_meta_data ->> 'full_name') on conflict do nothing;
  return new;
end;
$$;
"""


def test_takeover_of_a_function_this_role_does_not_own_recreates_the_trigger_never_firing(
    db: TestDB, installer: str
) -> None:
    with db.connect() as conn:
        conn.execute(PROFILES)
    with db.connect_admin() as conn:  # owned by the platform's superuser, not the installer
        conn.execute(ODD_LEGACY)
        conn.execute(
            sql.SQL(
                "create trigger {} after insert or update of email, phone on auth.users"
                " for each row execute function public.legacy_profile('it''s', 'x')"
            ).format(sql.Identifier(ODD_NAME))
        )
    original = trigger_definition(db, ODD_NAME)
    source = function_source(db, "legacy_profile")

    # It also writes a log, which no mapping says: the takeover asks for the mapping written out.
    with pytest.raises(ConfigError) as refused:
        install(db.settings, replace_triggers=[ODD_NAME])
    assert "could not learn" in refused.value.message
    assert "public.legacy_log" in refused.value.message
    assert 'full_name = ["raw_user_meta_data.full_name"]' in str(refused.value.hint)
    assert db.scalar("select to_regclass('profileguard.replaced_triggers')") is None
    written = replace(
        db.settings,
        mapping={"full_name": (Source.parse("raw_user_meta_data.full_name", setting="t"),)},
        mapping_is_default=False,
    )
    result = install(written, replace_triggers=[ODD_NAME])
    assert result.replaced_triggers == [ODD_NAME]
    method = db.scalar("select method from profileguard.replaced_triggers")
    if installer == "supabase_postgres":
        assert method == "never_fires"
        assert " WHEN (false) " in trigger_definition(db, ODD_NAME)
        assert function_source(db, "legacy_profile") == source
    else:  # a superuser is a member of every role: it may replace the function's body
        assert method == "function"
        assert trigger_definition(db, ODD_NAME) == original
    uid = db.signup({"full_name": "Only profileguard"})
    assert (
        db.scalar("select full_name from public.profiles where id = %s", (uid,))
        == "Only profileguard"
    )
    assert db.scalar("select count(*) from public.legacy_log") == 0
    assert db.scalar("select count(*) from profileguard.failures") == 0

    notes: list[str] = []
    assert uninstall(db.settings, notes=notes) is True
    assert notes
    assert trigger_definition(db, ODD_NAME) == original
    assert function_source(db, "legacy_profile") == source
    assert db.scalar("select tgenabled from pg_trigger where tgname = %s", (ODD_NAME,)) == "O"
    uid = db.signup({"full_name": "Legacy again"})
    assert db.scalar("select args from public.legacy_log where id = %s", (uid,)) == ["it's", "x"]


def test_trigger_disabled_by_an_earlier_version_is_enabled_again_by_uninstall(
    db: TestDB,
) -> None:
    """Version 5 recorded triggers it had disabled with ALTER TABLE; uninstall re-creates them."""
    with db.connect() as conn:
        conn.execute(PROFILES)
        conn.execute(FLAKY_LEGACY)
    install(db.settings, keep_triggers=["on_auth_user_created"])
    with db.connect_admin() as conn:
        conn.execute("alter table auth.users disable trigger on_auth_user_created")
        conn.execute(
            "insert into profileguard.replaced_triggers (table_name, trigger_name,"
            " function_name, previous_mode) values ('auth.users', 'on_auth_user_created',"
            " 'public.handle_new_user()', 'O')"
        )
    assert uninstall(db.settings) is True
    assert (
        db.scalar("select tgenabled from pg_trigger where tgname = 'on_auth_user_created'") == "O"
    )


def test_logins_do_not_queue_behind_a_takeover_waiting_for_a_long_transaction(
    db: TestDB,
) -> None:
    """A long transaction holds a lock on auth.users that trigger DDL conflicts with. While the
    takeover waits for it, logins still go through (each attempt gives way after lock_timeout);
    once the long transaction ends, the takeover completes."""
    with db.connect() as conn:
        conn.execute(PROFILES)
        conn.execute(FLAKY_LEGACY)
    users = [db.signup({"full_name": f"U{n}"}) for n in range(4)]
    holder = db.connect(autocommit=False)
    holder.execute("update auth.users set last_sign_in_at = now() where id = %s", (users[0],))
    outcome: dict[str, object] = {}

    def take_over() -> None:
        try:
            outcome["result"] = install(db.settings, replace_triggers=["on_auth_user_created"])
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=take_over)
    thread.start()
    try:
        assert wait_for(
            lambda: (
                db.scalar(
                    "select count(*) from pg_locks l join pg_stat_activity a using (pid)"
                    " where not l.granted and l.relation = 'auth.users'::regclass"
                    " and a.application_name = 'profileguard'"
                )
                > 0
            ),
            timeout=20,
        )
        with db.connect() as login:
            # Without a lock_timeout on the DDL this login would wait for the long transaction.
            login.execute("set statement_timeout = '5s'")
            for uid in users[1:]:
                login.execute("update auth.users set last_sign_in_at = now() where id = %s", (uid,))
        assert thread.is_alive()  # still trying: the long transaction is still open
    finally:
        holder.commit()
        holder.close()
        thread.join(timeout=90)
    assert "error" not in outcome, outcome.get("error")
    assert db.scalar("select method from profileguard.replaced_triggers") == "function"
    assert (
        db.scalar("select count(*) from pg_trigger where tgname = 'profileguard_after_insert'") == 1
    )


def test_takeover_after_a_disabled_install_enables_profileguard_in_the_same_step(
    db: TestDB,
) -> None:
    with db.connect() as conn:
        conn.execute(PROFILES)
        conn.execute(FLAKY_LEGACY)
    install(db.settings, enabled=False)
    refused = cli(db, "install", "--disabled", "--replace-trigger", "on_auth_user_created")
    assert refused.returncode == 2
    assert "no trigger creating profiles" in refused.stderr
    assert db.scalar("select count(*) from profileguard.replaced_triggers") == 0

    taken = cli(db, "install", "--replace-trigger", "on_auth_user_created", "--json")
    assert taken.returncode == 0, taken.stderr
    assert db.scalar("select enabled from profileguard.settings") is True
    created, failed = signups_as_auth(db, 20)
    assert failed == 0
    assert db.scalar("select count(*) from public.profiles where id = any(%s)", (created,)) == 20
    again = cli(db, "install", "--replace-trigger", "on_auth_user_created", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False


def identity_state(db: TestDB) -> list[tuple[object, ...]]:
    """The triggers on auth.users and their functions' bodies, and profileguard's schema."""
    with db.connect() as conn:
        return conn.execute(
            "select t.tgname, t.tgenabled, pg_get_triggerdef(t.oid), p.prosrc,"
            " to_regnamespace('profileguard') is not null"
            " from pg_trigger t join pg_proc p on p.oid = t.tgfoid"
            " where t.tgrelid = 'auth.users'::regclass and not t.tgisinternal order by 1"
        ).fetchall()


def test_install_and_sql_refuse_to_run_beside_a_profile_creating_trigger(db: TestDB) -> None:
    """Without --replace-trigger or --keep-trigger, install and sql stop with exit 2, naming
    the trigger and both choices, and change nothing; --replace-trigger then takes over."""
    with db.connect() as conn:
        conn.execute(PROFILES)
        conn.execute(FLAKY_LEGACY)
    before = identity_state(db)
    for command in ("install", "sql"):
        refused = cli(db, command)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert refused.stdout == ""
        message = " ".join(refused.stderr.split())
        assert "trigger on_auth_user_created on auth.users also creates profiles" in message
        assert f"profileguard {command} --replace-trigger on_auth_user_created" in message
        assert f"profileguard {command} --keep-trigger on_auth_user_created" in message
        assert identity_state(db) == before
    assert db.scalar("select to_regnamespace('profileguard')") is None

    # Disabled, profileguard creates no profiles: the install goes ahead and says what is next.
    disabled = cli(db, "install", "--disabled", "--json")
    assert disabled.returncode == 0, disabled.stderr
    assert any("stays disabled beside it" in n for n in json.loads(disabled.stdout)["notes"])
    again = cli(db, "install", "--json")  # flags as installed: still disabled
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    # Enabling it beside the trigger is refused as installing enabled is.
    events = db.scalar("select count(*) from profileguard.events")
    refused = cli(db, "enable")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    message = " ".join(refused.stderr.split())
    assert "profileguard install --replace-trigger on_auth_user_created" in message
    assert "--keep-trigger on_auth_user_created then profileguard enable" in message
    assert db.scalar("select enabled from profileguard.settings") is False
    assert db.scalar("select count(*) from profileguard.events") == events

    taken = cli(db, "install", "--replace-trigger", "on_auth_user_created", "--json")
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["replaced_triggers"] == ["on_auth_user_created"]
    created, failed = signups_as_auth(db, 30)
    assert failed == 0
    assert db.scalar("select count(*) from public.profiles where id = any(%s)", (created,)) == 30
    # Taken over, it no longer competes: installing again needs no flag.
    assert cli(db, "install").returncode == 0


def test_keep_trigger_installs_beside_it_knowingly_and_audit_reports_it_as_kept(
    db: TestDB,
) -> None:
    from profileguard.audit import run_audit

    with db.connect() as conn:
        conn.execute(PROFILES)
        conn.execute(FLAKY_LEGACY)
    missing = cli(db, "install", "--keep-trigger", "on_auth_user_creatd")
    assert missing.returncode == 2 and "no trigger 'on_auth_user_creatd'" in missing.stderr
    both = cli(db, "install", "--keep-trigger", "x", "--replace-trigger", "x")
    assert both.returncode == 2 and "named by both" in both.stderr
    assert db.scalar("select to_regnamespace('profileguard')") is None

    kept = cli(db, "install", "--keep-trigger", "on_auth_user_created", "--json")
    assert kept.returncode == 0, kept.stderr
    result = json.loads(kept.stdout)
    assert result["replaced_triggers"] == []
    assert any("kept beside profileguard" in n for n in result["notes"])
    with db.connect() as conn:
        record = conn.execute(
            "select table_name, trigger_name, function_name from profileguard.kept_triggers"
        ).fetchall()
    assert record == [("auth.users", "on_auth_user_created", "public.handle_new_user()")]
    # Both triggers run: the legacy one is untouched and still fails one sign-up in ten.
    state = {row[0]: row for row in identity_state(db)}
    assert {"on_auth_user_created", "profileguard_after_insert"} <= set(state)
    assert "insert into public.profiles" in str(state["on_auth_user_created"][3])
    created, failed = signups_as_auth(db, 20)
    assert failed == 2
    assert db.scalar("select count(*) from public.profiles where id = any(%s)", (created,)) == 18
    report = run_audit(db.settings)
    assert [f.code for f in report.findings if "trigger" in f.code] == ["kept_trigger"]
    finding = next(f for f in report.findings if f.code == "kept_trigger")
    assert finding.severity == "warning" and finding.evidence["kept"] is True
    assert finding.fix == "profileguard install --replace-trigger on_auth_user_created"

    again = cli(db, "install", "--json")  # the choice is recorded: no flag needed again
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    taken = cli(db, "install", "--replace-trigger", "on_auth_user_created")
    assert taken.returncode == 0, taken.stderr
    assert db.scalar("select count(*) from profileguard.kept_triggers") == 0
    codes = {f.code for f in run_audit(db.settings).findings}
    assert "replaced_trigger" in codes and "kept_trigger" not in codes


def test_the_installer_is_shaped_like_hosted_supabase_postgres(db: TestDB, installer: str) -> None:
    with db.connect() as conn:
        row = conn.execute(
            "select r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,"
            " pg_get_userbyid(c.relowner) = current_user,"
            " has_table_privilege('auth.users', 'select, insert, update, delete, trigger'),"
            " has_schema_privilege('auth', 'usage'), has_schema_privilege('auth', 'create'),"
            " pg_has_role('service_role', 'member'), has_database_privilege(current_database(),"
            " 'create')"
            " from pg_roles r, pg_class c"
            " where r.rolname = current_user and c.oid = 'auth.users'::regclass"
        ).fetchone()
    if installer == "supabase_postgres":
        assert row == (False, True, True, True, False, True, True, False, True, True)
    else:
        assert row is not None and row[0] is True

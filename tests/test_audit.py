"""`profileguard audit` on databases seeded with each problem: every problem is reported with its
fix, and applying the fix text literally (SQL, or a profileguard command run as a real process)
clears it."""

from __future__ import annotations

import json
import shlex
import uuid

import psycopg
import pytest
from conftest import TestDB, as_of
from test_cli import cli

from profileguard import sql as sqlfiles
from profileguard.audit import AuditReport, Finding, run_audit
from profileguard.install import install, set_enabled
from profileguard.installation import TRIGGER_NAME

# The trigger Supabase documents (security definer, empty search_path, qualified names).
DOCUMENTED_TRIGGER = """
create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into public.profiles (id, full_name, avatar_url)
  values (new.id, new.raw_user_meta_data ->> 'full_name', new.raw_user_meta_data ->> 'avatar_url');
  return new;
end;
$$;
create trigger on_auth_user_created after insert on auth.users
  for each row execute procedure public.handle_new_user();
"""

SUPABASE_PROFILES = """
create table public.profiles (
  id uuid not null references auth.users on delete cascade primary key,
  username text unique check (char_length(username) >= 3),
  full_name text,
  avatar_url text
);
alter table public.profiles enable row level security;
"""


def execute(db: TestDB, statement: str, params: object = None) -> None:
    with db.connect() as conn:
        conn.execute(statement, params)


def audit(db: TestDB) -> AuditReport:
    return run_audit(db.settings)


def findings(report: AuditReport, code: str) -> list[Finding]:
    return [f for f in report.findings if f.code == code]


def one(report: AuditReport, code: str) -> Finding:
    found = findings(report, code)
    assert len(found) == 1, (code, [f.as_dict() for f in report.findings])
    return found[0]


def apply_fix(db: TestDB, finding: Finding) -> None:
    """Run the fix exactly as the finding gives it: each line is one SQL statement or command."""
    assert finding.fix, finding
    for step in finding.fix.splitlines():
        if step.startswith("profileguard "):
            args = shlex.split(step)[1:]
            if args[0] == "uninstall":
                args.append("--yes")
            result = cli(db, *args)
            assert result.returncode == 0, (step, result.stdout, result.stderr)
        else:
            with db.connect() as conn:
                conn.execute(step)


def fix_and_check_cleared(db: TestDB, finding: Finding, **match: object) -> AuditReport:
    apply_fix(db, finding)
    after = audit(db)
    still = [
        f
        for f in findings(after, finding.code)
        if all(f.evidence.get(k) == v for k, v in match.items())
    ]
    assert still == [], [f.as_dict() for f in still]
    return after


def test_missing_profile_table_is_reported_and_install_clears_it_without_opening_a_hole(
    db: TestDB,
) -> None:
    report = audit(db)
    missing = one(report, "profile_table_missing")
    assert missing.severity == "error" and report.has_errors
    assert missing.fix == "profileguard install --create-profile-table"
    assert one(report, "not_installed").severity == "info"

    after = fix_and_check_cleared(db, missing)
    assert findings(after, "not_installed") == []
    assert after.state["installed"] is True
    # A fresh install leaves nothing worse than "no worker has run yet".
    serious = [f.as_dict() for f in after.findings if f.severity != "info"]
    assert serious == []
    assert {f.code for f in after.findings} <= {"no_worker"}


def test_audit_runs_read_only_and_writes_nothing(installed: TestDB) -> None:
    installed.bulk_signup(3)
    execute(installed, "delete from public.profiles")
    events = installed.scalar("select count(*) from profileguard.events")
    dbname = installed.scalar("select current_database()")
    execute(installed, f'alter database "{dbname}" set default_transaction_read_only = on')
    report = audit(installed)
    assert one(report, "missing_profiles").evidence["count"] == 3
    with installed.connect() as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("delete from public.profiles")
        conn.execute("set default_transaction_read_only = off")
        conn.execute(f'alter database "{dbname}" reset default_transaction_read_only')
    assert installed.scalar("select count(*) from profileguard.events") == events
    assert installed.scalar("select count(*) from public.profiles") == 0


def test_documented_trigger_is_a_competing_path_and_replace_trigger_takes_over(
    db: TestDB,
) -> None:
    with db.connect() as conn:
        conn.execute(SUPABASE_PROFILES)
        conn.execute(DOCUMENTED_TRIGGER)
    report = audit(db)
    competing = one(report, "competing_trigger")
    assert competing.severity == "warning"  # safe as written, but a second creation path
    assert competing.evidence["function"] == "public.handle_new_user()"
    assert competing.evidence["handles_errors"] is False
    assert competing.fix == "profileguard install --replace-trigger on_auth_user_created"
    # splinter 0028/0029: the documented trigger function is executable by the API roles.
    executable = one(report, "definer_function_executable")
    assert set(executable.evidence["grantees"]) == {"public", "anon", "authenticated"}

    original = db.scalar("select prosrc from pg_proc where proname = 'handle_new_user'")
    after = fix_and_check_cleared(db, competing)
    assert one(after, "replaced_trigger").evidence["trigger"] == "on_auth_user_created"
    # The installer owns handle_new_user: its body became a no-op; the trigger is untouched.
    assert "insert into" not in db.scalar(
        "select prosrc from pg_proc where proname = 'handle_new_user'"
    )
    assert (
        db.scalar("select tgenabled from pg_trigger where tgname = 'on_auth_user_created'") == "O"
    )
    uid = db.signup({"full_name": "Only One"}, email="one@example.com")
    assert db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "Only One"
    assert db.scalar("select count(*) from profileguard.failures") == 0
    event = db.scalar(
        "select detail from profileguard.events where kind = 'config' order by id desc limit 1"
    )
    assert event["replaced_triggers"] == ["on_auth_user_created"]

    fix_and_check_cleared(db, executable)
    with db.connect() as conn:
        conn.execute("set role anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select public.handle_new_user()")

    result = cli(db, "uninstall", "--yes")
    assert result.returncode == 0, result.stderr
    assert "restored the body of public.handle_new_user()" in result.stdout
    assert (
        db.scalar("select tgenabled from pg_trigger where tgname = 'on_auth_user_created'") == "O"
    )
    assert db.scalar("select prosrc from pg_proc where proname = 'handle_new_user'") == original
    uid = db.signup({"full_name": "Back Again"}, email="back@example.com")
    assert db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "Back Again"


def test_competing_trigger_with_profileguard_enabled_is_an_error(db: TestDB) -> None:
    """A trigger created after install (install refuses to run beside one): an error, and
    installing again is refused until the fix names it."""
    execute(db, SUPABASE_PROFILES)
    install(db.settings)
    execute(db, DOCUMENTED_TRIGGER)
    competing = one(audit(db), "competing_trigger")
    assert competing.severity == "error"
    assert any("two paths" in r for r in competing.evidence["risks"])
    again = cli(db, "install")
    assert again.returncode == 2 and "--keep-trigger on_auth_user_created" in again.stderr
    fix_and_check_cleared(db, competing)


def test_trigger_that_aborts_signups_is_an_error_and_taking_over_fixes_signups(
    db: TestDB,
) -> None:
    with db.connect() as conn:
        conn.execute(SUPABASE_PROFILES)
        # Not SECURITY DEFINER and an unqualified name: fails under GoTrue's role and search_path.
        conn.execute(
            "create function public.make_profile() returns trigger language plpgsql as $$"
            " begin insert into profiles (id) values (new.id); return new; end $$;"
            " create trigger make_profile after insert on auth.users"
            " for each row execute function public.make_profile();"
        )
    competing = one(audit(db), "competing_trigger")
    assert competing.severity == "error"
    risks = " ".join(competing.evidence["risks"])
    assert "42501" in risks and "42P01" in risks

    def signup_as_auth_admin() -> uuid.UUID:
        uid = uuid.uuid4()
        with db.connect_admin() as conn:  # Supabase Auth's own role (the platform's)
            conn.execute("set role supabase_auth_admin")
            conn.execute("set search_path = auth")
            conn.execute(
                "insert into users (id, aud, role, email, raw_user_meta_data)"
                " values (%s, 'authenticated', '', %s, '{}')",
                (uid, f"{uid}@example.com"),
            )
        return uid

    with pytest.raises(psycopg.errors.UndefinedTable):
        signup_as_auth_admin()
    fix_and_check_cleared(db, competing)
    uid = signup_as_auth_admin()
    assert db.scalar("select count(*) from public.profiles where id = %s", (uid,)) == 1


def test_missing_and_orphan_profiles(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "create table public.profiles (id uuid primary key, full_name text,"
            " username text, avatar_url text)"
        )
    db.bulk_signup(7)
    orphan = uuid.uuid4()
    execute(db, "insert into public.profiles (id) values (%s)", (orphan,))
    report = audit(db)
    missing = one(report, "missing_profiles")
    assert missing.severity == "error"
    assert missing.evidence["count"] == 7
    assert len(missing.evidence["sample"]) == 5
    assert missing.evidence["oldest"] is not None
    assert missing.fix is not None
    assert missing.fix.splitlines()[0] == "profileguard install --disabled"
    orphans = one(report, "orphan_profiles")
    assert (orphans.evidence["count"], orphans.evidence["sample"]) == (1, [str(orphan)])

    fix_and_check_cleared(db, missing)
    assert (
        db.scalar(
            "select count(*) from auth.users u where not exists"
            " (select from public.profiles p where p.id = u.id)"
        )
        == 0
    )
    assert db.scalar("select count(*) from profileguard.events where kind = 'repair'") == 7
    after = fix_and_check_cleared(db, orphans)
    assert not after.has_errors
    assert db.scalar("select count(*) from public.profiles") == 7


def test_columns_constraints_and_foreign_keys_at_risk(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "create table public.profiles ("
            " id uuid primary key references auth.users (id),"
            " username text unique check (char_length(username) >= 3),"
            " full_name varchar(8) check (char_length(full_name) >= 2),"
            " bio text not null)"
        )
    db.bulk_signup(4)  # full names 'User 1'…'User 4' fit; these two do not
    db.signup({"full_name": "A much longer full name"}, email="long@example.com")
    db.signup({"full_name": "Q"}, email="short@example.com")
    report = audit(db)
    unfilled = one(report, "not_null_unfilled")
    assert unfilled.severity == "error" and unfilled.evidence["column"] == "bio"
    risky = one(report, "derived_value_at_risk")
    assert risky.evidence["column"] == "full_name"
    assert risky.evidence["users_without_profile_now_failing"] == {
        "too_long": 1,
        "too_short": 1,
        "duplicate": 0,
    }
    # username is guarded by profileguard (suffixed, fitted): not at risk.
    assert all(f.evidence.get("column") != "username" for f in report.findings)
    fk = one(report, "fk_blocks_user_deletion")
    assert fk.evidence["constraint"] == "profiles_id_fkey"

    for finding in (unfilled, risky, fk):
        fix_and_check_cleared(db, finding)
    report = audit(db)
    assert {"not_null_unfilled", "derived_value_at_risk", "fk_blocks_user_deletion"}.isdisjoint(
        report.codes()
    )
    # With the fixes in place, every user gets a profile and users can be deleted.
    install(db.settings)
    with db.connect() as conn:
        conn.execute(
            "select profileguard.create_profiles(array(select id from auth.users), 'test')"
        )
    assert db.scalar("select count(*) from public.profiles") == 6
    execute(db, "delete from auth.users where email = 'long@example.com'")
    assert db.scalar("select count(*) from public.profiles") == 5


def test_security_findings_and_their_fixes(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute(
            "create function public.make_admin(p_id uuid) returns void language sql"
            " security definer as $$ update auth.users set is_super_admin = true"
            " where id = p_id $$"
        )
        conn.execute("create table public.notes (id int, body text)")
        conn.execute("grant select, insert on public.notes to anon, authenticated")
        conn.execute("create view public.user_emails as select id, email from auth.users")
        conn.execute("grant select on public.user_emails to authenticated")
    report = audit(installed)
    executable = one(report, "definer_function_executable")
    assert executable.severity == "error"
    assert executable.evidence["function"] == "public.make_admin(uuid)"
    search_path = one(report, "function_search_path_mutable")
    rls = one(report, "rls_disabled")
    assert rls.evidence["table"] == "public.notes"
    assert set(rls.evidence["grantees"]) == {"anon", "authenticated"}
    view = one(report, "identity_exposed_by_view")
    assert view.evidence == {"view": "public.user_emails", "grantees": ["authenticated"]}

    with installed.connect() as conn:  # the hole is real before the fix
        conn.execute("set role anon")
        conn.execute("select public.make_admin(gen_random_uuid())")
    for finding in (executable, search_path, rls, view):
        fix_and_check_cleared(installed, finding)
    with installed.connect() as conn:
        conn.execute("set role anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select public.make_admin(gen_random_uuid())")
    with installed.connect() as conn:
        conn.execute("set role anon")
        assert conn.execute("select count(*) from public.notes").fetchone() == (0,)
    assert not audit(installed).has_errors


def test_profileguard_state_findings(installed: TestDB) -> None:
    assert one(audit(installed), "no_worker").fix == "profileguard worker"

    execute(
        installed,
        "insert into profileguard.workers (worker_id, hostname, pid, heartbeat_at)"
        " values ('w1', 'host', 1, now() - interval '1 hour')",
    )
    down = one(audit(installed), "worker_down")
    assert down.severity == "warning" and down.evidence["workers"] == 1
    execute(installed, "update profileguard.workers set heartbeat_at = now()")
    report = audit(installed)
    assert {"worker_down", "no_worker"}.isdisjoint(report.codes())
    assert report.state["workers_alive"] == 1

    set_enabled(installed.settings, False)
    fix_and_check_cleared(installed, one(audit(installed), "disabled"))

    # The table's owner (or a schema diff tool) disables, then drops the trigger; the fixes
    # must work for the installer, who does not own the table.
    with installed.connect_admin() as conn:
        conn.execute(f"alter table auth.users disable trigger {TRIGGER_NAME}")
    fix_and_check_cleared(installed, one(audit(installed), "trigger_disabled"))

    with installed.connect_admin() as conn:
        conn.execute(f"drop trigger {TRIGGER_NAME} on auth.users")
    missing = one(audit(installed), "trigger_missing")
    assert missing.severity == "error"
    fix_and_check_cleared(installed, missing)
    uid = installed.signup({"full_name": "After Repair"})
    assert installed.scalar("select count(*) from public.profiles where id = %s", (uid,)) == 1

    install(installed.settings, strict=True)
    fix_and_check_cleared(installed, one(audit(installed), "strict_mode"))


def test_upgrade_available_is_reported_and_upgrade_clears_it(
    db: TestDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = sqlfiles.migrations()
    with monkeypatch.context() as patch:
        as_of(patch, every[:-1])
        install(db.settings, create_profile_table=True)
    pending = one(audit(db), "upgrade_available")
    assert pending.evidence["pending"] == [every[-1].version]
    fix_and_check_cleared(db, pending)


def test_cli_audit_table_json_and_exit_codes(db: TestDB) -> None:
    result = cli(db, "audit", "--json")
    assert result.returncode == 8, result.stderr
    data = json.loads(result.stdout)
    assert data["summary"]["error"] >= 1
    assert "profile_table_missing" in {f["code"] for f in data["findings"]}

    assert cli(db, "install", "--create-profile-table").returncode == 0
    result = cli(db, "audit")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit findings" in result.stdout and "no_worker" in result.stdout

    assert cli(db, "disable").returncode == 0
    assert cli(db, "audit", "--fail-on", "warning").returncode == 8
    assert cli(db, "audit").returncode == 0
    bad = cli(db, "audit", "--fail-on", "loud")
    assert bad.returncode == 2 and "--fail-on" in bad.stderr


def test_profile_table_made_with_default_privileges_is_flagged_and_the_fix_clears_it(
    db: TestDB,
) -> None:
    version = int(db.scalar("select current_setting('server_version_num')"))
    with db.connect() as conn:
        # The old way on Supabase: default privileges grant ALL on new public tables.
        conn.execute(
            "alter default privileges in schema public"
            " grant all on tables to anon, authenticated, service_role"
        )
        conn.execute(SUPABASE_PROFILES)
    with db.connect_admin() as conn:  # a client (anon) plants a trigger of its own
        conn.execute(
            "create function public.planted() returns trigger language plpgsql"
            " as $$ begin return new; end $$"
        )
        conn.execute("alter function public.planted() owner to anon")
        conn.execute("set role anon")  # TRIGGER came with the default privileges
        conn.execute(
            "create trigger planted before insert on public.profiles"
            " for each row execute function public.planted()"
        )
        conn.execute("reset role")
    install(db.settings)
    report = audit(db)
    grants = {f.evidence["grantee"]: f for f in findings(report, "profile_table_grants")}
    assert set(grants) == {"anon", "authenticated"}
    expected = ["DELETE", "INSERT", "REFERENCES", "TRIGGER", "TRUNCATE"]
    if version >= 170000:
        expected = sorted([*expected, "MAINTAIN"])
    for role, finding in grants.items():
        assert finding.severity == "error"
        assert finding.evidence["privileges"] == expected, role
    assert grants["anon"].fix == (
        f'revoke {", ".join(p.lower() for p in expected)} on table "public"."profiles" from "anon";'
    )
    planted = one(report, "profile_table_foreign_trigger")
    assert planted.severity == "error"
    assert planted.evidence["function_owner"] == "anon"
    assert planted.fix == 'drop trigger "planted" on "public"."profiles";'
    # service_role is not an API role here (it is the server's key): not flagged.
    assert db.scalar("select has_table_privilege('service_role', 'public.profiles', 'DELETE')")

    with db.connect() as conn:  # the hole is real before the fix
        conn.execute("begin")
        conn.execute("set local role anon")
        conn.execute("truncate public.profiles")
        conn.execute("rollback")
    for role in ("anon", "authenticated"):
        fix_and_check_cleared(db, grants[role], grantee=role)
    after = fix_and_check_cleared(db, planted)
    assert findings(after, "profile_table_grants") == []
    for role in ("anon", "authenticated"):
        for privilege in ("TRUNCATE", "TRIGGER", "REFERENCES", "INSERT", "DELETE"):
            assert (
                db.scalar(
                    "select has_table_privilege(%s, 'public.profiles', %s)", (role, privilege)
                )
                is False
            ), (role, privilege)
        with db.connect() as conn:
            conn.execute(f"set role {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("truncate public.profiles")
    # What RLS governs stays: authenticated still selects and updates (its own rows).
    assert db.scalar("select has_table_privilege('authenticated', 'public.profiles', 'SELECT')")
    uid = db.signup({"full_name": "After"})
    assert db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "After"


def test_insert_and_delete_alone_are_a_warning(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(SUPABASE_PROFILES)
        conn.execute("grant select, insert, delete on public.profiles to public")
    finding = one(audit(db), "profile_table_grants")
    assert finding.severity == "warning"
    assert finding.evidence["grantee"] == "public"
    assert finding.evidence["privileges"] == ["DELETE", "INSERT"]
    assert finding.fix == 'revoke delete, insert on table "public"."profiles" from public;'
    fix_and_check_cleared(db, finding)
    assert db.scalar("select has_table_privilege('anon', 'public.profiles', 'SELECT')")

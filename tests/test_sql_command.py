"""`profileguard sql`: the migration file for `supabase db push`, rendered without running
anything; applied with psql it gives the same catalog as `profileguard install`."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TestDB, drop_db, scratch_db, wait_for
from test_cli import cli
from test_takeover import FLAKY_LEGACY, PROFILES
from test_upgrade import SNAPSHOT, snapshot

from profileguard.catalog import inspect_table
from profileguard.db import connect
from profileguard.install import install, profile_table_facts, render


@pytest.fixture
def twin(server_dsn: str, template_db: str, installer: str) -> Iterator[TestDB]:
    """A second scratch database like `db` (same installer)."""
    name = f"pg_sqlcmd_{id(object())}"
    yield scratch_db(server_dsn, template_db, name, installer)
    drop_db(server_dsn, name)


# How long the sign-in of the lock tests holds auth.users once the file asks for its lock.
HOLD_SECONDS = 5


def psql_command(db: TestDB, path: str) -> list[str]:
    """Apply a rendered file as the header says: one transaction, stop at the first error."""
    return ["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", db.url, "-f", path]


def psql(db: TestDB, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        psql_command(db, path),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def write(tmp_path: object, text: str, name: str = "profileguard.sql") -> str:
    path = f"{tmp_path}/{name}"
    with open(path, "w") as f:
        f.write(text)
    return path


def rendered(db: TestDB, tmp_path: object, *args: str, name: str = "profileguard.sql") -> str:
    """`profileguard sql ARGS` written to a file; its path."""
    done = cli(db, "sql", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    return write(tmp_path, done.stdout, name)


def lock_requested(db: TestDB) -> bool:
    """Whether another session waits for a lock on auth.users right now."""
    return bool(
        db.scalar(
            "select exists (select from pg_locks l where l.relation = 'auth.users'::regclass"
            " and not l.granted and l.pid <> pg_backend_pid()"
            " and l.database = (select oid from pg_database where datname = current_database()))"
        )
    )


def apply_during_a_sign_in(db: TestDB, path: str) -> subprocess.CompletedProcess[str]:
    """Apply the file with psql while another connection's sign-in (an UPDATE of auth.users, as
    every login makes) holds the table: it commits HOLD_SECONDS after the file asked for its
    lock on auth.users, so the file's lock request certainly met the held lock."""
    uid = db.signup({"full_name": "Signing In"})
    with db.connect(autocommit=False) as holder:
        holder.execute("update auth.users set last_sign_in_at = now() where id = %s", (uid,))
        applying = subprocess.Popen(
            psql_command(db, path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: applying.poll() is not None or lock_requested(db), timeout=120)
            assert applying.poll() is None, applying.communicate()[1]
            time.sleep(HOLD_SECONDS)
            holder.commit()  # the sign-in commits: it was not cancelled nor timed out
            stdout, stderr = applying.communicate(timeout=120)
        finally:
            if applying.poll() is None:
                applying.kill()
    assert db.scalar("select last_sign_in_at is not null from auth.users where id = %s", (uid,))
    return subprocess.CompletedProcess(applying.args, applying.returncode, stdout, stderr)


def catalog(db: TestDB) -> dict[str, list[tuple[Any, ...]]]:
    """SNAPSHOT without profileguard's rows (empty where its schema is gone), with every
    function of schema public: what install changes and uninstall must give back."""
    queries = {
        name: query.replace("'profileguard'::regnamespace", "to_regnamespace('profileguard')")
        for name, query in SNAPSHOT.items()
        if "from profileguard." not in query
    }
    queries["public_functions"] = (
        "select p.oid::regprocedure::text, pg_get_functiondef(p.oid), coalesce(p.proacl::text, '')"
        " from pg_proc p where p.pronamespace = 'public'::regnamespace"
    )
    with db.connect() as conn:
        return {
            name: sorted(conn.execute(query).fetchall(), key=repr)
            for name, query in queries.items()
        }


def objects_locked(db: TestDB) -> int:
    """Relation locks held right now by other sessions in this database."""
    return int(
        db.scalar(
            "select count(*) from pg_locks where locktype = 'relation'"
            " and database = (select oid from pg_database where datname = current_database())"
            " and pid <> pg_backend_pid()"
        )
    )


def test_rendered_file_applied_with_psql_equals_install(
    db: TestDB, twin: TestDB, tmp_path: object
) -> None:
    for target in (db, twin):
        with target.connect() as conn:
            conn.execute(PROFILES)
            conn.execute(FLAKY_LEGACY)
    args = ("--replace-trigger", "on_auth_user_created")
    rendered = cli(db, "sql", *args)
    assert rendered.returncode == 0, rendered.stderr
    text = rendered.stdout
    assert db.scalar("select to_regnamespace('profileguard')") is None  # nothing was run
    assert text.index("set local lock_timeout") < text.index("create schema if not exists")
    last = text[text.index("-- Last and short") :]
    # The retried lock comes right before the statements that need it, in the mode they take.
    assert last.index('lock table "auth"."users"\n                in share row exclusive mode') < (
        last.index("create or replace trigger")
    )
    assert "lock table" not in text[: text.index("-- Last and short")]
    assert "create or replace trigger profileguard_after_insert" in last
    assert "create or replace function public.handle_new_user()" in last
    assert "create or replace function profileguard." not in last

    path = f"{tmp_path}/profileguard.sql"
    with open(path, "w") as f:
        f.write(text)
    applied = psql(db, path)
    assert applied.returncode == 0, applied.stderr
    installed = cli(twin, "install", *args)
    assert installed.returncode == 0, installed.stderr
    ours, theirs = snapshot(db), snapshot(twin)
    for part in SNAPSHOT:
        if part != "settings":
            assert ours[part] == theirs[part], part
    # The same takeover record (the saved definition included), and it gives the trigger back.
    record = (
        "select row(trigger_name, method, saved_definition)::text"
        " from profileguard.replaced_triggers"
    )
    assert db.scalar(record) == twin.scalar(record)
    assert db.scalar(record) is not None
    assert cli(db, "uninstall", "--yes").returncode == 0
    assert "insert into public.profiles" in str(
        db.scalar("select prosrc from pg_proc where proname = 'handle_new_user'")
    )


def test_rendered_file_keeps_a_trigger_when_told_and_is_refused_otherwise(
    db: TestDB, tmp_path: object
) -> None:
    with db.connect() as conn:
        conn.execute(PROFILES)
        conn.execute(FLAKY_LEGACY)
    refused = cli(db, "sql")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "profileguard sql --keep-trigger on_auth_user_created" in " ".join(
        refused.stderr.split()
    )
    rendered = cli(db, "sql", "--keep-trigger", "on_auth_user_created")
    assert rendered.returncode == 0, rendered.stderr
    last = rendered.stdout[rendered.stdout.index("-- Last and short") :]
    assert "insert into profileguard.kept_triggers" in last
    assert "handle_new_user" not in last.replace("'public.handle_new_user()'", "")
    path = f"{tmp_path}/profileguard.sql"
    with open(path, "w") as f:
        f.write(rendered.stdout)
    applied = psql(db, path)
    assert applied.returncode == 0, applied.stderr
    assert db.scalar("select trigger_name from profileguard.kept_triggers") == (
        "on_auth_user_created"
    )
    assert cli(db, "install").returncode == 0  # kept: installing again asks nothing


def test_rendered_file_with_a_new_profile_table_equals_install(
    db: TestDB, twin: TestDB, tmp_path: object
) -> None:
    rendered = cli(db, "sql", "--create-profile-table")
    assert rendered.returncode == 0, rendered.stderr
    assert db.scalar("select to_regclass('public.profiles')") is None
    path = f"{tmp_path}/profileguard.sql"
    with open(path, "w") as f:
        f.write(rendered.stdout)
    applied = psql(db, path)
    assert applied.returncode == 0, applied.stderr
    install(twin.settings, create_profile_table=True)
    ours, theirs = snapshot(db), snapshot(twin)
    for part in SNAPSHOT:
        if part != "settings":
            assert ours[part] == theirs[part], part
    uid = db.signup({"full_name": "From The File"})
    assert (
        db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "From The File"
    )


def test_rendering_takes_no_lock_and_writes_nothing(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(PROFILES)
    install(db.settings)
    with db.connect(autocommit=False) as holder:
        # The lock CREATE TRIGGER takes (and logins queue behind) does not stop rendering: it
        # only reads the catalog (deparsing a constraint takes ACCESS SHARE on its table, which
        # only ACCESS EXCLUSIVE conflicts with).
        holder.execute("lock table auth.users in exclusive mode")
        result = render(db.settings, strict=True)
        assert result.statements
        holder.rollback()
    assert db.scalar("select strict from profileguard.settings") is False
    assert objects_locked(db) == 0


def test_the_profile_table_described_before_it_exists_is_the_table_created(db: TestDB) -> None:
    install(db.settings, create_profile_table=True)
    with connect(db.settings) as conn:
        identity = inspect_table(conn, db.settings.identity)
        assert identity is not None
        assert profile_table_facts(identity, db.settings) == inspect_table(
            conn, db.settings.profile
        )


def test_rendered_file_passes_when_the_tables_gain_columns(db: TestDB, tmp_path: object) -> None:
    """Supabase Auth adds columns to auth.users: a committed migration must still replay."""
    path = rendered(db, tmp_path, "--create-profile-table")
    with db.connect_admin() as conn:
        conn.execute("alter table auth.users add column tenant_id uuid, add column mfa jsonb")
        conn.execute("alter table auth.users alter column phone_change type varchar(100)")
    applied = psql(db, path)
    assert applied.returncode == 0, applied.stderr
    uid = db.signup({"full_name": "After Auth Grew"})
    assert (
        db.scalar("select full_name from public.profiles where id = %s", (uid,))
        == "After Auth Grew"
    )


def test_rendered_file_stops_naming_each_column_that_changed(db: TestDB, tmp_path: object) -> None:
    # A username column: the username rule reads the provider (raw_app_meta_data); by default no
    # rule reads the email, so a change of its type is not the file's concern.
    with db.connect() as conn:
        conn.execute(
            "create table public.profiles (id uuid primary key references auth.users,"
            " username text unique, full_name text, avatar_url text)"
        )
    path = rendered(db, tmp_path)
    with db.connect_admin() as conn:
        conn.execute("alter table auth.users alter column email type text")
        conn.execute("alter table auth.users drop column raw_app_meta_data")
        conn.execute("alter table auth.users add column tenant_id uuid")
        conn.execute("alter table public.profiles alter column full_name type varchar(80)")
    applied = psql(db, path)
    assert applied.returncode != 0
    message = applied.stderr
    assert "differs from the one this file was rendered for (nothing was changed)" in message
    assert "email" not in message
    assert '"auth"."users".raw_app_meta_data is missing (expected jsonb)' in message
    assert '"public"."profiles".full_name is character varying(80), expected text' in message
    assert "tenant_id" not in message
    assert "render a new migration after the last one" in message
    assert "edit" not in message.lower()
    assert db.scalar("select to_regnamespace('profileguard')") is None


def test_rendered_file_stops_at_another_schema_version(db: TestDB, tmp_path: object) -> None:
    """Two files rendered against the same state: the second would install over the first."""
    first = rendered(db, tmp_path, "--create-profile-table", name="first.sql")
    second = rendered(db, tmp_path, "--create-profile-table", name="second.sql")
    assert psql(db, first).returncode == 0
    applied = psql(db, second)
    assert applied.returncode != 0
    version = db.scalar("select max(version) from profileguard.migrations")
    assert f"schema version is {version} here, this file was rendered for 0" in applied.stderr
    assert '"public"."profiles" exists here, and this file creates it' in applied.stderr


def test_rendered_install_waits_out_a_sign_in_holding_the_users_table(
    db: TestDB, tmp_path: object
) -> None:
    path = rendered(db, tmp_path, "--create-profile-table")
    applied = apply_during_a_sign_in(db, path)
    assert applied.returncode == 0, applied.stderr
    uid = db.signup({"full_name": "After The Wait"})
    assert (
        db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "After The Wait"
    )


def test_rendered_uninstall_gives_back_the_catalog_before_install(
    db: TestDB, tmp_path: object
) -> None:
    with db.connect() as conn:
        conn.execute(PROFILES)
        conn.execute(FLAKY_LEGACY)
    before = catalog(db)
    installed = cli(db, "install", "--replace-trigger", "on_auth_user_created")
    assert installed.returncode == 0, installed.stderr
    assert catalog(db) != before

    path = rendered(db, tmp_path, "--uninstall")
    text = Path(path).read_text()
    assert "what `profileguard uninstall` runs" in text
    assert text.index("in access exclusive mode") < text.index("drop schema if exists profileguard")
    assert db.scalar("select to_regnamespace('profileguard')") is not None  # nothing was run
    applied = apply_during_a_sign_in(db, path)
    assert applied.returncode == 0, applied.stderr
    assert catalog(db) == before
    uid = db.signup({"full_name": "Legacy Again"})
    assert (
        db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "Legacy Again"
    )

    again = psql(db, path)  # the rollback replayed where profileguard is gone
    assert again.returncode != 0
    assert "schema version is 0 here" in again.stderr
    assert "the triggers taken over on" in again.stderr
    nothing = cli(db, "sql", "--uninstall")
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout == ""
    assert "not installed" in nothing.stderr


def test_sql_uninstall_takes_no_install_option(db: TestDB) -> None:
    done = cli(db, "sql", "--uninstall", "--strict")
    assert done.returncode == 2
    assert "--strict does not apply" in done.stderr


def test_sql_renders_nothing_on_an_up_to_date_install(db: TestDB) -> None:
    installed = cli(db, "install", "--create-profile-table")
    assert installed.returncode == 0, installed.stderr
    nothing = cli(db, "sql")
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout == ""
    assert "nothing would change" in nothing.stderr
    # Another configuration renders what changes it, and nothing that locks auth.users.
    strict = cli(db, "sql", "--strict")
    assert strict.returncode == 0, strict.stderr
    assert "update profileguard.settings set strict = true" in strict.stdout
    assert "lock table" not in strict.stdout
    assert "-- Last and short" not in strict.stdout
    # A sync trigger gone (only the owner of auth.users can drop it): rendered again, and
    # install agrees.
    with db.connect_admin() as conn:
        conn.execute("drop trigger profileguard_after_update on auth.users")
    repair = cli(db, "sql")
    assert repair.returncode == 0, repair.stderr
    last = repair.stdout[repair.stdout.index("-- Last and short") :]
    assert "create or replace trigger profileguard_after_update\n" in last
    assert "in share row exclusive mode" in last
    assert "create or replace trigger profileguard_after_insert" not in last
    again = install(db.settings)
    assert again.changed is True
    assert (
        db.scalar(
            "select count(*) from pg_trigger where tgrelid = 'auth.users'::regclass"
            " and tgname like 'profileguard%%'"
        )
        == 3
    )
    assert install(db.settings).changed is False


def test_sql_schedule_pg_cron_is_refused_where_pg_cron_is_not_loaded(db: TestDB) -> None:
    """As install --schedule pg_cron is (test_cron.py); test_cron_tick.py applies the rendered
    schedule on a cluster that preloads pg_cron."""
    done = cli(db, "sql", "--create-profile-table", "--schedule", "pg_cron")
    assert done.returncode == 2
    assert "pg_cron is" in done.stderr
    assert done.stdout == ""
    bad = cli(db, "sql", "--schedule", "systemd")
    assert bad.returncode == 2
    assert "--schedule pg_cron" in bad.stderr

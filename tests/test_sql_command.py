"""`profileguard sql`: the migration file for `supabase db push`, rendered without running
anything; applied with psql it gives the same catalog as `profileguard install`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from conftest import TestDB, drop_db, scratch_db
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


def psql(db: TestDB, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.url, "-f", path],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


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
    assert text.index("set lock_timeout") < text.index("create schema if not exists profileguard")
    last = text[text.index("-- Last and short") :]
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


def test_rendered_file_stops_when_the_tables_differ(db: TestDB, tmp_path: object) -> None:
    rendered = cli(db, "sql", "--create-profile-table")
    assert rendered.returncode == 0, rendered.stderr
    path = f"{tmp_path}/profileguard.sql"
    with open(path, "w") as f:
        f.write(rendered.stdout)
    with db.connect_admin() as conn:
        conn.execute("alter table auth.users add column tenant_id uuid")
    applied = psql(db, path)
    assert applied.returncode != 0
    assert '"auth"."users" or "public"."profiles" here differ' in applied.stderr
    assert db.scalar("select to_regnamespace('profileguard')") is None
    assert db.scalar("select to_regclass('public.profiles')") is None


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

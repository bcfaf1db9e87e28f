"""The command line, run as a real process against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from conftest import TestDB


def cli(
    db: TestDB | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }
    base.update(env or {})
    prefix = ["--database-url", db.url] if db is not None else []
    return subprocess.run(
        [sys.executable, "-m", "profileguard", *prefix, *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_install_twice_uninstall_install_keeps_profiles(db: TestDB) -> None:
    first = cli(db, "install", "--create-profile-table", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["changed"] is True
    uid = db.signup({"full_name": "Kept Profile"}, email="kept@example.com")
    before = db.scalar("select to_jsonb(p) from public.profiles p where id = %s", (uid,))
    assert before["full_name"] == "Kept Profile"

    second = cli(db, "install", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["changed"] is False

    removed = cli(db, "uninstall", "--yes", "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"removed": True, "notes": []}
    assert db.scalar("select count(*) from pg_namespace where nspname = 'profileguard'") == 0

    again = cli(db, "install", "--json")
    assert again.returncode == 0, again.stderr
    after = db.scalar("select to_jsonb(p) from public.profiles p where id = %s", (uid,))
    assert after == before
    assert db.scalar("select count(*) from auth.users") == 1


def test_uninstall_without_yes_and_no_terminal_refuses(installed: TestDB) -> None:
    result = cli(installed, "uninstall")
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert installed.scalar("select count(*) from pg_namespace where nspname = 'profileguard'") == 1


def test_sql_command_changes_nothing(db: TestDB) -> None:
    result = cli(db, "sql", "--create-profile-table")
    assert result.returncode == 0, result.stderr
    assert "create or replace function profileguard.ensure_profile" in result.stdout
    assert "set search_path = pg_catalog, pg_temp" in result.stdout
    assert db.scalar("select to_regclass('public.profiles')") is None
    assert db.scalar("select count(*) from pg_namespace where nspname = 'profileguard'") == 0


def test_enable_disable_and_version(installed: TestDB) -> None:
    off = cli(installed, "disable", "--json")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout) == {"enabled": False, "changed": True}
    uid = installed.signup({"full_name": "Off"})
    assert installed.scalar("select count(*) from public.profiles where id = %s", (uid,)) == 0

    info = json.loads(cli(installed, "version", "--json").stdout)
    assert info["installed"] is True and info["enabled"] is False
    assert info["schema_version"] == info["latest_schema_version"] >= 1

    on = cli(installed, "enable", "--json")
    assert json.loads(on.stdout) == {"enabled": True, "changed": True}
    installed.signup({"full_name": "On"})
    assert installed.scalar("select count(*) from public.profiles") == 1


def test_ensure_command(installed: TestDB) -> None:
    cli(installed, "disable")
    uid = installed.signup({"full_name": "Needs Repair"}, email="needs@example.com")
    result = cli(installed, "ensure", str(uid), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["created"] is True
    assert data["profile"]["full_name"] == "Needs Repair"
    again = json.loads(cli(installed, "ensure", str(uid), "--json").stdout)
    assert again["created"] is False
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and source = 'cli'"
        )
        == 1
    )


def test_ensure_errors_have_exit_codes_and_hints(installed: TestDB) -> None:
    unknown = cli(installed, "ensure", str(uuid.uuid4()))
    assert unknown.returncode == 5
    assert "no user" in unknown.stderr
    malformed = cli(installed, "ensure", "not-a-uuid")
    assert malformed.returncode == 2
    assert "invalid user id" in malformed.stderr


def test_no_database_configured_names_the_fix() -> None:
    result = cli(None, "install")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr


def test_bad_config_names_the_key(db: TestDB, tmp_path: object) -> None:
    result = cli(db, "install", env={"PROFILEGUARD_PROFILE_TABLE": "public.profiles; drop"})
    assert result.returncode == 2
    assert "profile.table" in result.stderr


def test_unreachable_database_exit_code() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "profileguard",
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
            "install",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 4
    assert "cannot reach the database" in result.stderr


def test_help_lists_commands() -> None:
    result = cli(None, "--help")
    assert result.returncode == 0
    for command in ("install", "upgrade", "uninstall", "enable", "disable", "ensure", "version"):
        assert command in result.stdout


def test_usage_errors_exit_2(installed: TestDB) -> None:
    retry = cli(installed, "retry", "xyz")
    assert retry.returncode == 2, retry.stderr
    assert "'xyz'" in retry.stderr and "not a user id" in retry.stderr
    audit = cli(installed, "audit", "--fail-on", "bogus")
    assert audit.returncode == 2 and "--fail-on" in audit.stderr
    empty_url = cli(None, "status", env={"DATABASE_URL": "postgresql://"})
    assert empty_url.returncode == 2, empty_url.stderr
    assert "names no database" in empty_url.stderr


def test_backfill_refuses_a_profile_table_other_than_the_installed_one(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute("create table public.members (id uuid primary key, username text)")
    other = cli(
        installed, "backfill", "--dry-run", env={"PROFILEGUARD_PROFILE_TABLE": "public.members"}
    )
    assert other.returncode == 2, other.stderr
    assert "public.profiles" in other.stderr and "public.members" in other.stderr

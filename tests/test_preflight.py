"""Install preflight: the table against the mapping, and a rehearsal into temporary copies."""

from __future__ import annotations

import json

import pytest
from conftest import TestDB
from test_cli import cli

from profileguard.errors import ConfigError
from profileguard.install import install


def _table(db: TestDB, ddl: str) -> None:
    with db.connect() as conn:
        conn.execute(ddl)


def test_unfillable_not_null_column_is_refused_with_its_name(db: TestDB) -> None:
    _table(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " username text, bio text not null)",
    )
    db.signup({"full_name": "Before"}, email="before@example.com")
    with pytest.raises(ConfigError) as info:
        install(db.settings)
    text = str(info.value)
    assert "public.profiles.bio" in text and "mapping.bio" in text and "set default" in text
    assert db.scalar("select to_regnamespace('profileguard')") is None  # nothing installed
    refused = cli(db, "install")
    assert refused.returncode == 2 and "bio" in refused.stderr
    forced = install(db.settings, force=True)
    assert forced.preflight is not None and forced.preflight.refusals


def test_check_reports_a_sample_failure_with_its_sqlstate(db: TestDB) -> None:
    _table(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " full_name text check (char_length(full_name) <= 10), username text)",
    )
    uid = db.signup({"full_name": "A name far too long for this column"})
    db.signup({"full_name": "Short"})
    checked = cli(db, "install", "--check", "--json")
    assert checked.returncode == 1, checked.stderr
    report = json.loads(checked.stdout)
    failing = [f for f in report["failures"] if f["subject"] == f"user {uid}"]
    assert failing and failing[0]["sqlstate"] == "23514"
    assert "profiles_full_name_check" in failing[0]["message"]
    assert report["rehearsed"] >= 2 + 10 and not report["refusals"]
    # --check changed nothing, and the rehearsal never touched the real tables.
    assert db.scalar("select to_regnamespace('profileguard')") is None
    assert db.scalar("select count(*) from public.profiles") == 0
    assert db.scalar("select count(*) from auth.users") == 2
    human = cli(db, "install", "--check")
    assert "SQLSTATE 23514" in human.stdout and human.returncode == 1


def test_check_passes_on_the_supabase_starter_table(db: TestDB) -> None:
    _table(
        db,
        "create table public.profiles (id uuid not null references auth.users on delete"
        " cascade primary key, updated_at timestamptz, username text unique,"
        " full_name text, avatar_url text, website text,"
        " constraint username_length check (char_length(username) >= 3))",
    )
    db.bulk_signup(5)
    checked = cli(db, "install", "--check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["failures"] == []


def test_a_regex_check_is_warned_about(db: TestDB) -> None:
    _table(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " username text not null check (username ~ '^[a-z0-9_]{3,24}$'))",
    )
    result = install(db.settings)
    assert any("restricts characters" in n and "NOT NULL" in n for n in result.notes)

"""Deferrable constraints on the profile table: every path that writes profiles checks them where
its failure is caught, so a violation is retried or recorded and never fails a sign-up at COMMIT.

Real concurrency: sign-ups run on their own connections, in transactions held open together.
"""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import psycopg
import pytest
from conftest import TestDB, wait_for
from test_worker import fast_worker, running

from profileguard.audit import run_audit
from profileguard.errors import ConfigError
from profileguard.install import install

SIGNUPS = 5
DEFERRED_USERNAME = """
create table public.profiles (
    id uuid primary key references auth.users (id) on delete cascade,
    username text,
    full_name text,
    avatar_url text,
    constraint profiles_username_key unique (username) deferrable initially deferred
)
"""


def make_table(db: TestDB, ddl: str = DEFERRED_USERNAME) -> None:
    with db.connect() as conn:
        conn.execute(ddl)


def signup_in_transaction(
    db: TestDB, meta: dict[str, object], together: threading.Barrier | None = None
) -> tuple[uuid.UUID, str | None]:
    """A sign-up in one transaction (insert, role update, commit); with `together`, every
    sign-up's insert is done before any commits. Returns (id, the COMMIT's error or None)."""
    uid = uuid.uuid4()
    with db.connect(autocommit=False) as conn:
        try:
            db.signup(meta, user_id=uid, conn=conn)
            if together is not None:
                together.wait(timeout=30)
            conn.commit()
        except psycopg.Error as exc:
            return uid, f"{exc.sqlstate}: {exc}"
    return uid, None


def usernames(db: TestDB, users: list[uuid.UUID]) -> list[str | None]:
    with db.connect() as conn:
        rows = conn.execute(
            "select p.username from unnest(%s::uuid[]) u(id)"
            " left join public.profiles p on p.id = u.id",
            (users,),
        ).fetchall()
    return [r[0] for r in rows]


def test_sign_ups_sharing_a_github_name_all_commit_under_a_deferred_unique_username(
    db: TestDB,
) -> None:
    make_table(db)
    install(db.settings)
    results = [signup_in_transaction(db, {"user_name": "octocat"}) for _ in range(SIGNUPS)]
    assert [error for _, error in results] == [None] * SIGNUPS
    names = usernames(db, [uid for uid, _ in results])
    assert None not in names
    assert len(set(names)) == SIGNUPS
    assert names[0] == "octocat"
    assert all(str(n).startswith("octocat_") for n in names[1:])


def test_concurrent_sign_ups_sharing_a_name_commit_and_each_gets_a_profile(db: TestDB) -> None:
    make_table(db)
    install(db.settings)
    together = threading.Barrier(SIGNUPS)
    with ThreadPoolExecutor(SIGNUPS) as pool:
        results = list(
            pool.map(
                lambda _: signup_in_transaction(db, {"user_name": "hubot"}, together),
                range(SIGNUPS),
            )
        )
    assert [error for _, error in results] == [None] * SIGNUPS
    users = [uid for uid, _ in results]
    # Sign-ups that waited on each other's names past the lock budget were recorded (55P03) and
    # are the worker's to create.
    with running(fast_worker(db)):
        assert wait_for(lambda: None not in usernames(db, users))
    names = usernames(db, users)
    assert len(set(names)) == SIGNUPS
    assert names.count("hubot") == 1


def test_the_declared_mode_is_back_after_a_sign_up(db: TestDB) -> None:
    """Checked at the sign-up, then deferred again: the caller's later duplicate raises only at
    its COMMIT, as the table declares."""
    make_table(db)
    install(db.settings)
    with db.connect(autocommit=False) as conn:
        first = db.signup({"user_name": "grace"}, conn=conn)
        second = db.signup({"user_name": "ada"}, conn=conn)
        conn.execute("update public.profiles set username = 'grace' where id = %s", (second,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.commit()
    assert usernames(db, [first, second]) == [None, None]


def test_repair_ensure_and_backfill_retry_a_deferred_violation_with_a_suffix(db: TestDB) -> None:
    make_table(db)
    db.bulk_signup(3, prefix="dup")
    with db.connect() as conn:
        conn.execute('update auth.users set raw_user_meta_data = \'{"user_name": "linus"}\'')
        users = [r[0] for r in conn.execute("select id from auth.users order by id").fetchall()]
    install(db.settings)
    with db.connect() as conn:
        conn.execute("insert into public.profiles (id, username) values (%s, 'linus')", (users[0],))
        result = conn.execute(
            "select profileguard.repair(array[%s]::uuid[], 'test')", (users[1],)
        ).fetchone()
        assert result is not None and result[0]["created"] == 1 and result[0]["failed"] == 0
        row = conn.execute(
            "select created from profileguard.ensure_profile(%s)", (users[2],)
        ).fetchone()
        assert row == (True,)
    names = usernames(db, users)
    assert names[0] == "linus"
    assert all(str(n).startswith("linus_") for n in names[1:])
    with db.connect() as conn:
        conn.execute("delete from public.profiles where id <> %s", (users[0],))
        counts = conn.execute("select profileguard.backfill_pages(0, 1000)").fetchone()
    assert counts is not None and counts[0][1] == 2
    assert len(set(usernames(db, users))) == 3


def test_a_deferred_constraint_trigger_failing_is_recorded_and_the_sign_up_commits(
    db: TestDB,
) -> None:
    make_table(db)
    with db.connect() as conn:
        conn.execute(
            "create function public.no_bots() returns trigger language plpgsql as $$ begin"
            " if new.full_name like 'bot%' then raise exception 'no bots'; end if;"
            " return null; end $$"
        )
        conn.execute(
            "create constraint trigger no_bots after insert on public.profiles"
            " deferrable initially deferred for each row execute function public.no_bots()"
        )
    install(db.settings)
    uid, error = signup_in_transaction(db, {"full_name": "bot 1"})
    assert error is None
    ok, error = signup_in_transaction(db, {"full_name": "Ada"})
    assert error is None
    assert (
        db.scalar(
            "select count(*) from profileguard.events where kind = 'failure' and user_id = %s",
            (str(uid),),
        )
        == 1
    )
    assert db.scalar("select count(*) from public.profiles where id = %s", (ok,)) == 1
    report = run_audit(db.settings)
    found = [f for f in report.findings if f.code == "deferred_constraint"]
    assert {f.evidence["constraint"] for f in found} == {
        '"public"."no_bots"',
        '"public"."profiles_username_key"',
    }


def test_audit_names_a_deferred_constraint_added_after_install(installed: TestDB) -> None:
    assert "deferred_constraint_unchecked" not in run_audit(installed.settings).codes()
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint full_name_once unique (full_name)"
            " deferrable initially deferred"
        )
    found = [
        f
        for f in run_audit(installed.settings).findings
        if f.code == "deferred_constraint_unchecked"
    ]
    assert [f.fix for f in found] == ["profileguard install"]
    install(installed.settings)
    assert "deferred_constraint_unchecked" not in run_audit(installed.settings).codes()


def test_a_login_commits_when_its_sync_violates_a_deferred_username(db: TestDB) -> None:
    make_table(db)
    settings = replace(db.settings, sync_policies={"username": "follow", "full_name": "follow"})
    install(settings)
    taken = db.signup({"user_name": "taken"})
    uid = db.signup({"user_name": "mine", "full_name": "Me"})
    with db.connect(autocommit=False) as conn:
        conn.execute(
            "update auth.users set raw_user_meta_data = %s where id = %s",
            (json.dumps({"user_name": "taken", "full_name": "Me Too"}), uid),
        )
        conn.commit()
    names = usernames(db, [taken, uid])
    assert names[0] == "taken"
    assert names[1] != "taken"


def test_no_deferrable_constraint_no_statement_added(installed: TestDB) -> None:
    for name in ("on_identity_insert", "create_profiles", "backfill_pages", "sync_profiles"):
        source = installed.scalar(
            "select prosrc from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'profileguard' and p.proname = %s",
            (name,),
        )
        assert "set constraints" not in source


def test_preflight_refuses_a_deferrable_profile_key(db: TestDB) -> None:
    make_table(
        db,
        "create table public.profiles (id uuid references auth.users (id),"
        " username text, full_name text, avatar_url text,"
        " constraint profiles_pkey primary key (id) deferrable)",
    )
    with pytest.raises(ConfigError, match="DEFERRABLE"):
        install(db.settings)

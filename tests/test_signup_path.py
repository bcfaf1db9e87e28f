"""The signup path never blocks or fails a signup: locks, timeouts, asserts, cancels, strict mode.

Each test holds a real lock, sets a real statement_timeout or cancels a real backend; signups run
in threads on their own connections while the fault is in place.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
import pytest
from conftest import TestDB, wait_for
from test_worker import fast_worker, running

from profileguard.config import load_settings
from profileguard.install import install
from profileguard.mapping.guards import LockBudget

SIGNUPS = 5


@contextmanager
def locked(db: TestDB, *tables: str) -> Iterator[None]:
    """ACCESS EXCLUSIVE on `tables` until the block ends (a migration's ALTER TABLE, say)."""
    with db.connect(autocommit=False) as conn:
        for table in tables:
            conn.execute(f"lock table {table} in access exclusive mode")
        yield
        conn.rollback()


def signup_all(db: TestDB, count: int, prefix: str) -> list[uuid.UUID]:
    """`count` concurrent signups, each on its own connection; every one must commit."""
    with ThreadPoolExecutor(count) as pool:
        futures = [
            pool.submit(db.signup, {"full_name": f"{prefix} {i}", "user_name": f"{prefix}{i}"})
            for i in range(count)
        ]
        return [f.result(timeout=60) for f in futures]


def missing(db: TestDB, users: list[uuid.UUID]) -> int:
    return int(
        db.scalar(
            "select count(*) from unnest(%s::uuid[]) u(id)"
            " where not exists (select from public.profiles p where p.id = u.id)",
            (users,),
        )
    )


def failures(db: TestDB, sqlstate: str) -> int:
    return int(
        db.scalar(
            "select count(*) from profileguard.events where kind = 'failure' and sqlstate = %s",
            (sqlstate,),
        )
    )


def profile_table_trigger(db: TestDB, body: str) -> None:
    """A BEFORE INSERT trigger of the app's own on the profile table."""
    with db.connect() as conn:
        conn.execute(
            "create function public.app_check() returns trigger language plpgsql as"
            f" $$ begin {body}; return new; end $$"
        )
        conn.execute(
            "create trigger app_check before insert on public.profiles"
            " for each row execute function public.app_check()"
        )


def drop_profile_table_trigger(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute("drop trigger app_check on public.profiles")
        conn.execute("drop function public.app_check()")


def function_config(db: TestDB, name: str) -> list[str]:
    return list(
        db.scalar(
            "select proconfig from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'profileguard' and p.proname = %s",
            (name,),
        )
    )


def test_lock_timeout_is_rendered_from_the_settings(db: TestDB) -> None:
    settings = load_settings(env={"PROFILEGUARD_LOCK_TIMEOUT_MS": "350"}, database_url=db.url)
    install(settings, create_profile_table=True)
    config = db.scalar("select proconfig::text from pg_proc where proname = 'on_identity_insert'")
    # The sign-up's budget over its insert's lock waits: the table, the username's index.
    assert f"lock_timeout={350 // 2}ms" in config
    assert "jit=off" in config


def test_each_lock_wait_gets_its_share_of_the_sign_up_budget(db: TestDB) -> None:
    """Username and avatar unique: an insert may wait on the table and 2 indexes (never on the
    key's), 250 ms / 3 each; the failure path's 50 ms over its 4 waits (the retry's 3, the
    events table); an update's 250 ms over 5 (the row twice more). At most 297 ms in all."""
    with db.connect() as conn:
        conn.execute(
            "create table public.profiles (id uuid primary key references auth.users (id),"
            " username text unique, full_name text, avatar_url text unique)"
        )
    install(db.settings)
    assert "lock_timeout=83ms" in function_config(db, "on_identity_insert")
    source = db.scalar("select prosrc from pg_proc where proname = 'on_identity_insert'")
    assert "'lock_timeout', '12ms'" in source
    assert "lock_timeout=50ms" in function_config(db, "on_identity_update")
    assert LockBudget(250, 50, 2).bound_ms == 297


def test_a_sign_up_behind_two_in_flight_sign_ups_commits_while_they_still_hold_their_keys(
    db: TestDB,
) -> None:
    """Its username held by one in-flight sign-up, its avatar (a unique index) by another: the
    sign-up gives up waiting within its budget, commits while both still hold their keys, and
    the worker creates its profile once they are gone."""
    with db.connect() as conn:
        conn.execute(
            "create table public.profiles (id uuid primary key references auth.users (id),"
            " username text unique, full_name text, avatar_url text unique)"
        )
    install(db.settings)
    with db.connect(autocommit=False) as name_holder, db.connect(autocommit=False) as avatar_holder:
        db.signup({"user_name": "held", "avatar_url": "a.png"}, conn=name_holder)
        db.signup({"user_name": "other", "avatar_url": "held.png"}, conn=avatar_holder)
        with ThreadPoolExecutor(1) as pool:
            uid = pool.submit(db.signup, {"user_name": "held", "avatar_url": "held.png"}).result(
                timeout=30
            )
        assert db.scalar("select count(*) from auth.users where id = %s", (uid,)) == 1
        assert failures(db, "55P03") == 1
        name_holder.rollback()
        avatar_holder.rollback()
    with running(fast_worker(db)):
        assert wait_for(lambda: missing(db, [uid]) == 0)
    assert db.scalar("select username from public.profiles where id = %s", (uid,)) == "held"


def test_signups_commit_while_the_profile_table_is_locked(installed: TestDB) -> None:
    with locked(installed, "public.profiles"):
        users = signup_all(installed, SIGNUPS, "locked")
        # Every signup committed while the lock was still held: none waited for it.
        assert (
            installed.scalar("select count(*) from auth.users where id = any(%s)", (users,))
            == SIGNUPS
        )
    assert missing(installed, users) == SIGNUPS
    assert failures(installed, "55P03") == SIGNUPS
    with running(fast_worker(installed)):
        assert wait_for(lambda: missing(installed, users) == 0)


def test_signups_commit_while_profile_and_events_tables_are_locked(installed: TestDB) -> None:
    with installed.connect() as listener:
        listener.execute("listen profileguard")
        with locked(installed, "public.profiles", "profileguard.events"):
            users = signup_all(installed, SIGNUPS, "both")
            assert (
                installed.scalar("select count(*) from auth.users where id = any(%s)", (users,))
                == SIGNUPS
            )
        notices = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    # Nothing could be recorded; the notification says so, and a worker sweeps for the users.
    assert notices and notices[0]["recorded"] is False
    assert notices[0]["sqlstate"] == "55P03"
    assert failures(installed, "55P03") == 0
    assert missing(installed, users) == SIGNUPS
    with running(fast_worker(installed)):
        assert wait_for(lambda: missing(installed, users) == 0)


def test_a_worker_repairs_users_it_was_told_about_only_by_notification(
    installed: TestDB,
) -> None:
    worker = fast_worker(installed, incremental_interval=3600.0)
    with running(worker):
        assert wait_for(lambda: worker.stats["passes"] >= 1)
        with locked(installed, "public.profiles", "profileguard.events"):
            users = signup_all(installed, SIGNUPS, "told")
        assert wait_for(lambda: missing(installed, users) == 0)
    assert worker.stats["notifications"] >= 1


def test_strict_mode_fails_a_signup_at_the_lock_budget_instead_of_waiting(db: TestDB) -> None:
    install(db.settings, create_profile_table=True, strict=True)
    with locked(db, "public.profiles"):
        with pytest.raises(psycopg.errors.LockNotAvailable):
            db.signup({"full_name": "Strict"})
        assert db.scalar("select count(*) from auth.users") == 0


def test_statement_timeout_inside_the_trigger_is_recorded_and_the_signup_commits(
    installed: TestDB,
) -> None:
    profile_table_trigger(installed, "perform pg_sleep(1.5)")
    with installed.connect() as conn:
        conn.execute("set statement_timeout = '300ms'")
        user = installed.signup({"full_name": "Slow"}, conn=conn)
    assert installed.scalar("select count(*) from auth.users where id = %s", (user,)) == 1
    assert failures(installed, "57014") == 1
    assert missing(installed, [user]) == 1
    drop_profile_table_trigger(installed)
    with running(fast_worker(installed)):
        assert wait_for(lambda: missing(installed, [user]) == 0)


def test_a_failed_assert_in_the_profile_tables_trigger_is_recorded(installed: TestDB) -> None:
    profile_table_trigger(installed, "assert new.full_name <> 'Bad', 'no Bad names'")
    user = installed.signup({"full_name": "Bad"})
    good = installed.signup({"full_name": "Good"})
    assert failures(installed, "P0004") == 1
    assert missing(installed, [user, good]) == 1
    drop_profile_table_trigger(installed)
    with running(fast_worker(installed)):
        assert wait_for(lambda: missing(installed, [user]) == 0)


def test_pg_cancel_backend_still_cancels_a_signup(installed: TestDB) -> None:
    profile_table_trigger(installed, "perform pg_sleep(30)")
    errors: list[BaseException] = []
    with installed.connect() as conn:
        pid = conn.info.backend_pid

        def signup() -> None:
            try:
                installed.signup({"full_name": "Cancelled"}, conn=conn)
            except psycopg.Error as exc:
                errors.append(exc)

        thread = threading.Thread(target=signup)
        thread.start()
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select wait_event = 'PgSleep' from pg_stat_activity where pid = %s", (pid,)
                )
                is True
            )
        )
        assert installed.scalar("select pg_cancel_backend(%s)", (pid,)) is True
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.QueryCanceled)
    assert installed.scalar("select count(*) from auth.users") == 0
    assert failures(installed, "57014") == 0


AUTO_EXPLAIN = {
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_level": "notice",
    "jit": "on",
    "jit_above_cost": "0",
    "jit_inline_above_cost": "0",
    "jit_optimize_above_cost": "0",
}


# What the test itself sends; everything else auto_explain shows ran inside them.
TOP_LEVEL = (
    "insert into auth.users",
    "update auth.users",
    "alter table public.profiles",
    "delete from public.profiles",
    "select * from profileguard.ensure_profile",
    "update profileguard.settings",
)


@pytest.mark.jit
def test_no_statement_on_the_signup_path_is_jit_compiled(installed: TestDB) -> None:
    """With JIT forced in the caller, no statement the signup path runs (nested ones included,
    seen through auto_explain) is compiled: a compile costs ~10-100 ms on every signup."""
    assert installed.scalar("select pg_jit_available()") is True, "this server has no JIT"
    plans: list[str] = []
    with installed.connect() as conn:
        conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
        conn.execute("load 'auto_explain'")
        for name, value in AUTO_EXPLAIN.items():
            conn.execute("select set_config(%s, %s, false)", (name, value))
        conn.execute("select count(*) from generate_series(1, 10)")
        assert any("JIT:" in p for p in plans), "the control statement was not JIT-compiled"
        plans.clear()

        installed.signup({"full_name": "Single", "user_name": "taken"}, conn=conn)
        installed.signup({"full_name": "Collides", "user_name": "taken"}, conn=conn)
        # A name to clean: the lean insert leaves it to the full one.
        installed.signup({"full_name": "Cleaned", "user_name": "T\u00e5ken\u200b"}, conn=conn)
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " select gen_random_uuid(), 'authenticated', 'authenticated', 'jit' || g || '@x.io',"
            " jsonb_build_object('full_name', 'Bulk ' || g), now() from generate_series(1, 50) g"
        )
        conn.execute("alter table public.profiles add constraint no_bad check (full_name <> 'Bad')")
        installed.signup({"full_name": "Bad"}, conn=conn)  # the failure path records it
        conn.execute("alter table public.profiles drop constraint no_bad")
        user = installed.signup({"full_name": "Ensured"}, conn=conn)
        conn.execute("delete from public.profiles where id = %s", (user,))
        conn.execute("select * from profileguard.ensure_profile(%s)", (user,))
        conn.execute("update profileguard.settings set enabled = false")
        installed.signup({"full_name": "Disabled"}, conn=conn)

    # The caller's own statements are JIT-compiled (it forced JIT); the ones profileguard runs
    # inside them (its functions' statements and the foreign-key checks they cause) must not be.
    nested = [p for p in plans if not p.split("Query Text: ", 1)[-1].startswith(TOP_LEVEL)]
    assert len(nested) >= 10, f"auto_explain saw too little of the signup path: {plans}"
    assert any("pg_new_users" in p for p in nested)
    compiled = [p for p in nested if "JIT:" in p]
    assert compiled == [], f"JIT-compiled on the signup path:\n{compiled[0]}"
    assert installed.scalar("select count(*) from profileguard.events where kind = 'failure'") == 1


def test_a_profile_made_first_by_another_trigger_is_kept_without_a_failure(
    installed: TestDB,
) -> None:
    """The trigger inserts without ON CONFLICT; a profile that exists already (a legacy trigger
    still enabled, the app inserting it first) is handled by the retry, not recorded."""
    with installed.connect() as conn:
        conn.execute(
            "create function public.legacy() returns trigger language plpgsql as $$ begin"
            " insert into public.profiles (id, full_name) values (new.id, 'legacy');"
            " return new; end $$"
        )
        conn.execute(
            "create trigger legacy after insert on auth.users"
            " for each row execute function public.legacy()"
        )
    user = installed.signup({"full_name": "Both"})
    installed.bulk_signup(30)
    assert installed.scalar("select full_name from public.profiles where id = %s", (user,)) == (
        "legacy"
    )
    assert installed.scalar("select count(*) from public.profiles") == 31
    assert installed.scalar("select count(*) from profileguard.events where kind = 'failure'") == 0


def test_huge_metadata_under_a_tight_statement_timeout_never_fails_a_signup(
    installed: TestDB,
) -> None:
    """The trigger's time counts toward the caller's statement_timeout: 400 KB of metadata and a
    90 ms timeout failed every signup before; now each commits, its profile made or recorded."""
    bulky = {"full_name": "Bulky", "notes": "x" * 400_000}
    with installed.connect() as conn:
        conn.execute("set statement_timeout = '90ms'")
        users = [installed.signup(bulky, conn=conn) for _ in range(10)]
    assert installed.scalar("select count(*) from auth.users where id = any(%s)", (users,)) == 10
    recorded = failures(installed, "57014")
    assert missing(installed, users) == recorded
    with running(fast_worker(installed)):
        assert wait_for(lambda: missing(installed, users) == 0)

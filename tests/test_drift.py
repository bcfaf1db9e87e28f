"""Deletion and drift: soft delete redacts, the worker repairs profiles out of step, `drift`
reports them, `prune` removes profiles without a user, and the foreign key fix works as printed."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from conftest import TestDB, wait_for
from test_cli import cli

from profileguard import observe
from profileguard.audit import run_audit
from profileguard.install import install, set_enabled
from profileguard.repair import Worker

FOLLOW = {"full_name": "follow", "avatar_url": "follow"}


def reinstall(db: TestDB, **changes: Any) -> TestDB:
    settings = replace(db.settings, **changes)
    install(settings)
    return TestDB(db.url, settings)


def row(db: TestDB, uid: uuid.UUID) -> tuple[Any, ...]:
    with db.connect() as conn:
        found = conn.execute(
            "select username, full_name, avatar_url from public.profiles where id = %s", (uid,)
        ).fetchone()
    assert found is not None
    return tuple(found)


def soft_delete(db: TestDB, uid: uuid.UUID) -> None:
    """Supabase Auth's soft delete: deleted_at set, email hashed, both metadata columns cleared."""
    with db.connect() as conn:
        conn.execute(
            "update auth.users set deleted_at = now(), email = md5(email),"
            " raw_user_meta_data = '{}', raw_app_meta_data = '{}' where id = %s",
            (uid,),
        )


def drift_json(db: TestDB) -> dict[str, Any]:
    result = cli(db, "drift", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_soft_delete_redacts_the_configured_columns_and_wins_over_follow(installed: TestDB):
    db = reinstall(installed, sync_policies=FOLLOW, redact_columns=("full_name",))
    uid = db.signup({"full_name": "Ada", "avatar_url": "a.png", "user_name": "ada"})
    other = db.signup({"full_name": "Bob", "avatar_url": "b.png", "user_name": "bob"})
    soft_delete(db, uid)
    # full_name redacted; avatar_url follows no more (the cleared metadata is not copied).
    assert row(db, uid) == ("ada", None, "a.png")
    assert row(db, other) == ("bob", "Bob", "b.png")
    assert drift_json(db)["drifted"] == 0


def test_default_redaction_clears_every_mapped_column_but_the_username(installed: TestDB):
    uid = installed.signup({"full_name": "Ada", "avatar_url": "a.png", "user_name": "ada"})
    soft_delete(installed, uid)
    assert row(installed, uid) == ("ada", None, None)


def test_drift_is_reported_then_repaired_by_the_worker(installed: TestDB):
    db = reinstall(installed, sync_policies=FOLLOW)
    db.bulk_signup(30)
    deleted = db.signup({"full_name": "Gone", "avatar_url": "g.png"})
    set_enabled(db.settings, False)  # changes made while the trigger is off drift
    with db.connect() as conn:
        conn.execute(
            "update auth.users set raw_user_meta_data = jsonb_build_object("
            "'full_name', 'Renamed ' || email) where email like 'bulk1%%'"
        )
    soft_delete(db, deleted)
    set_enabled(db.settings, True)
    report = drift_json(db)
    renamed = db.scalar("select count(*) from auth.users where email like 'bulk1%%'")
    assert report["drifted"] == renamed + 1
    # Only the names differ (bulk users have no avatar on either side); the soft-deleted
    # user's profile still holds what redaction clears.
    assert report["by_column"] == {"full_name": renamed, "redact": 1}
    worker = Worker(db.settings)
    try:
        worker.run_once()
    finally:
        worker.close()
    assert drift_json(db)["drifted"] == 0
    assert row(db, deleted)[1:] == (None, None)
    assert (
        db.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and source = 'drift'"
        )
        == renamed + 1
    )


@contextmanager
def running(worker: Worker) -> Iterator[None]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run_forever(stop)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == []


def test_login_commits_past_a_rejecting_constraint_and_the_worker_fixes_it(installed: TestDB):
    db = reinstall(installed, sync_policies=FOLLOW)
    uid = db.signup({"full_name": "Ada"})
    with db.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint no_bob"
            " check (full_name is distinct from 'Bob')"
        )
    # Retries at most 1 s apart (backoff_cap), as an operator sets it for a fast repair.
    worker = Worker(
        db.settings,
        incremental_interval=0.5,
        full_interval=3600,
        heartbeat_interval=0.5,
        poll_interval=0.1,
        backoff_base=0.2,
        backoff_cap=1.0,
    )
    with running(worker):
        with db.connect() as conn:  # a social login with the rejected name commits
            conn.execute(
                'update auth.users set raw_user_meta_data = \'{"full_name": "Bob"}\','
                " last_sign_in_at = now() where id = %s",
                (uid,),
            )
        assert (
            db.scalar(
                "select raw_user_meta_data->>'full_name' from auth.users where id = %s", (uid,)
            )
            == "Bob"
        )
        assert (
            db.scalar(
                "select sqlstate from profileguard.events where kind = 'failure'"
                " and source = 'sync' and user_id = %s",
                (str(uid),),
            )
            == "23514"
        )
        # The worker tried and failed while the constraint is there (recorded, backed off).
        assert wait_for(
            lambda: (
                db.scalar(
                    "select attempts from profileguard.drift_state where user_id = %s", (str(uid),)
                )
                is not None
            ),
            timeout=10,
        )
        assert row(db, uid)[1] == "Ada"
        shown = observe.status(db.settings, refresh_if_older_than=0)
        assert shown["stats"]["drift_pending"] == 1
        assert shown["stats"]["sync_failures_hour"] == 1
        assert {c["name"]: c["status"] for c in shown["checks"]}["drift"] == "warning"
        assert shown["status"] == "healthy" and shown["warnings"] == ["drift"]  # a warning only
        with db.connect() as conn:
            conn.execute("alter table public.profiles drop constraint no_bob")
        removed = time.monotonic()
        assert wait_for(lambda: row(db, uid)[1] == "Bob", timeout=5)
        assert time.monotonic() - removed < 5
    assert db.scalar("select count(*) from profileguard.drift_state") == 0
    assert drift_json(db)["drifted"] == 0
    checks = {c["name"]: c["status"] for c in observe.status(db.settings)["checks"]}
    assert checks["drift"] == "ok"


def test_prune_dry_run_lists_exactly_the_orphans(db: TestDB):
    with db.connect() as conn:  # a profile table without a foreign key: orphans can exist
        conn.execute(
            "create table public.profiles (id uuid primary key, full_name text,"
            " username text, avatar_url text)"
        )
    install(db.settings)
    db.bulk_signup(5)
    orphans = sorted(str(uuid.uuid4()) for _ in range(3))
    with db.connect() as conn:
        for orphan in orphans:
            conn.execute("insert into public.profiles (id) values (%s)", (orphan,))
    dry = cli(db, "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["orphans"] == orphans
    assert db.scalar("select count(*) from public.profiles") == 8
    real = cli(db, "prune", "--json")
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["removed"] == 3
    assert db.scalar("select count(*) from public.profiles") == 5
    assert (
        db.scalar(
            "select array_agg(user_id order by user_id) from profileguard.events"
            " where kind = 'prune'"
        )
        == orphans
    )
    assert json.loads(cli(db, "prune", "--dry-run", "--json").stdout)["orphans"] == []


def test_foreign_key_fix_is_not_valid_then_validate_and_unblocks_deletion(db: TestDB):
    with db.connect() as conn:  # the starter table: no ON DELETE CASCADE
        conn.execute(
            "create table public.profiles (id uuid primary key references auth.users,"
            " full_name text, username text, avatar_url text)"
        )
    install(db.settings)
    uid = db.signup({"full_name": "Ada"})
    finding = next(
        f for f in run_audit(db.settings).findings if f.code == "fk_blocks_user_deletion"
    )
    assert finding.fix is not None
    first, second = finding.fix.splitlines()
    assert first.startswith("set lock_timeout = '3s'; alter table") and "not valid" in first
    assert second.startswith("set lock_timeout = '3s';") and "validate constraint" in second
    for step in (first, second):
        with db.connect() as conn:
            conn.execute(step)
    assert "fk_blocks_user_deletion" not in {f.code for f in run_audit(db.settings).findings}
    assert db.scalar("select convalidated from pg_constraint where conname = 'profiles_id_fkey'")
    with db.connect() as conn:
        conn.execute("delete from auth.users where id = %s", (uid,))
    assert db.scalar("select count(*) from public.profiles") == 0


def test_drift_fix_brings_every_profile_in_step(installed: TestDB):
    db = reinstall(installed, sync_policies=FOLLOW)
    db.bulk_signup(20)
    set_enabled(db.settings, False)
    with db.connect() as conn:
        conn.execute('update auth.users set raw_user_meta_data = \'{"full_name": "Same"}\'')
    set_enabled(db.settings, True)
    assert drift_json(db)["by_column"] == {"full_name": 20}
    fixed = cli(db, "drift", "--fix", "--json")
    assert fixed.returncode == 0, fixed.stderr
    result = json.loads(fixed.stdout)
    assert result["fixed"]["fixed"] == 20 and result["drifted"] == 0
    assert db.scalar("select count(*) from public.profiles where full_name = 'Same'") == 20

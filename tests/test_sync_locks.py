"""Sync never waits on profileguard's own tables: a lock held on them (a migration, a long report)
neither stalls a login nor loses its sync; a sync that can be neither made nor recorded is named in
the trigger's notification, and a worker brings it in step as soon as the locks are gone.

Each test holds a real lock on its own connection while Supabase Auth-shaped updates run.
"""

from __future__ import annotations

import json
import uuid

from conftest import TestDB, wait_for
from test_signup_path import locked
from test_sync import FOLLOW, profile, social_login, sync_failures, with_policies
from test_worker import fast_worker, running

USERS = 5


def full_names(db: TestDB, users: list[uuid.UUID]) -> list[object]:
    return [profile(db, uid)["full_name"] for uid in users]


def profileguard_tables(db: TestDB) -> list[str]:
    with db.connect() as conn:
        rows = conn.execute(
            "select format('%I.%I', schemaname, tablename) from pg_tables"
            " where schemaname = 'profileguard' order by 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_a_locked_events_table_neither_stalls_nor_loses_a_sync(installed: TestDB) -> None:
    db = with_policies(installed, FOLLOW)
    users = [db.signup({"full_name": f"Before {i}"}) for i in range(USERS)]
    with locked(db, "profileguard.events"):
        with db.connect() as conn:
            for i, uid in enumerate(users):
                social_login(conn, uid, {"full_name": f"After {i}"})
        # Synced while the lock is still held: the sync never reached for the events table.
        assert full_names(db, users) == [f"After {i}" for i in range(USERS)]
    assert sync_failures(db) == []


def test_every_profileguard_table_locked_still_syncs(installed: TestDB) -> None:
    db = with_policies(installed, FOLLOW)
    users = [db.signup({"full_name": f"Before {i}"}) for i in range(USERS)]
    tables = profileguard_tables(db)
    assert "profileguard.events" in tables and "profileguard.settings" in tables
    with locked(db, *tables):
        with db.connect() as conn:
            for i, uid in enumerate(users):
                social_login(conn, uid, {"full_name": f"After {i}"})
        assert full_names(db, users) == [f"After {i}" for i in range(USERS)]
    assert sync_failures(db) == []


def test_a_sync_neither_made_nor_recorded_is_named_and_made_after_the_locks(
    installed: TestDB,
) -> None:
    """Profiles and events locked: the login commits, the notification names the users, and a
    worker whose full drift pass is an hour away brings them in step once the locks are gone."""
    db = with_policies(installed, FOLLOW)
    users = [db.signup({"full_name": f"Before {i}"}) for i in range(USERS)]
    worker = fast_worker(db, incremental_interval=0.5, full_interval=3600.0)
    with running(worker):
        assert wait_for(lambda: worker.stats["passes"] >= 1)
        with db.connect() as listener:
            listener.execute("listen profileguard")
            with locked(db, "public.profiles", "profileguard.events"), db.connect() as conn:
                for i, uid in enumerate(users):
                    social_login(conn, uid, {"full_name": f"After {i}"})
            notices = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
        assert notices[0]["recorded"] is False and notices[0]["source"] == "sync"
        assert notices[0]["ids"] == [str(users[0])]
        assert wait_for(lambda: full_names(db, users) == [f"After {i}" for i in range(USERS)])
    assert sync_failures(db) == []

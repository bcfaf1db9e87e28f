"""The worker against the real server: sweeps, concurrency, quarantine, LISTEN, reconnects."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from conftest import TestDB, wait_for
from psycopg import sql
from psycopg.conninfo import make_conninfo

from profileguard.config import TableRef, load_settings
from profileguard.install import set_enabled
from profileguard.repair import Worker

BAD_NAME = "Bad User"
CONSTRAINT = "pg_test_no_bad_user"


def add_bad_constraint(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            f"alter table public.profiles add constraint {CONSTRAINT}"
            f" check (full_name is distinct from '{BAD_NAME}') not valid"
        )


def drop_bad_constraint(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(f"alter table public.profiles drop constraint {CONSTRAINT}")


def has_profile(db: TestDB, user_id: uuid.UUID) -> bool:
    return bool(db.scalar("select exists (select from public.profiles where id = %s)", (user_id,)))


def missing_profiles(db: TestDB) -> int:
    return int(
        db.scalar(
            "select count(*) from auth.users u"
            " where not exists (select from public.profiles p where p.id = u.id)"
        )
    )


def assert_each_repaired_once(db: TestDB, users: int) -> None:
    assert db.scalar("select count(*) from public.profiles") == users
    assert missing_profiles(db) == 0
    assert (
        db.scalar(
            "select count(*) from (select user_id from profileguard.events where kind = 'repair'"
            " group by user_id having count(*) > 1) d"
        )
        == 0
    )
    assert (
        db.scalar(
            "select count(distinct user_id) from profileguard.events"
            " where kind = 'repair' and source = 'worker'"
        )
        == users
    )


def test_run_once_repairs_every_missing_profile(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    installed.bulk_signup(1000)
    assert missing_profiles(installed) == 1000

    result = Worker(installed.settings, batch_size=300).run_once()

    assert result.scanned == 1000
    assert result.repaired == 1000
    assert (result.failed, result.quarantined) == (0, 0)
    assert result.batches == 4
    assert result.as_dict()["repaired"] == 1000
    assert_each_repaired_once(installed, 1000)
    assert (
        installed.scalar(
            "select full_name from public.profiles p join auth.users u using (id)"
            " where u.email = 'bulk7@example.com'"
        )
        == "User 7"
    )
    again = Worker(installed.settings).run_once()
    assert (again.scanned, again.repaired) == (0, 0)


def _worker_pass(url: str, worker_id: str) -> dict[str, Any]:
    """One worker process: its own settings, connection and pass."""
    settings = load_settings(env={}, database_url=url)
    worker = Worker(settings, worker_id=worker_id, batch_size=500)
    try:
        return worker.run_once().as_dict()
    finally:
        worker.close()


def test_parallel_worker_processes_create_each_profile_once(installed: TestDB) -> None:
    users = 50_000
    set_enabled(installed.settings, False)
    installed.bulk_signup(users)
    assert missing_profiles(installed) == users

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_worker_pass, [(installed.url, f"w{i}") for i in range(4)])

    assert sum(r["repaired"] for r in results) == users
    assert_each_repaired_once(installed, users)
    assert (
        installed.scalar("select count(*) from profileguard.events where kind = 'repair'") == users
    )


def test_failing_user_is_isolated_then_quarantined_then_retried(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    good = [installed.signup({"full_name": f"Good {i}"}) for i in range(40)]
    add_bad_constraint(installed)
    bad = installed.signup({"full_name": BAD_NAME})
    good += [installed.signup({"full_name": f"Late {i}"}) for i in range(20)]
    worker = Worker(
        installed.settings, batch_size=16, max_attempts=3, backoff_base=0.0, backoff_cap=0.0
    )

    first = worker.run_once()
    assert (first.repaired, first.failed, first.quarantined) == (60, 1, 0)
    assert all(has_profile(installed, u) for u in good)
    assert not has_profile(installed, bad)
    state = installed.scalar(
        "select jsonb_build_object('attempts', attempts, 'sqlstate', last_sqlstate,"
        " 'message', last_message, 'quarantined', quarantined_at is not null,"
        " 'history', jsonb_array_length(history)) from profileguard.repair_state"
        " where user_id = %s",
        (str(bad),),
    )
    assert state["attempts"] == 1
    assert state["sqlstate"] == "23514"
    assert CONSTRAINT in state["message"]
    assert state["quarantined"] is False
    assert state["history"] == 1
    assert installed.scalar("select count(*) from profileguard.repair_state") == 1

    second = worker.run_once()
    assert (second.scanned, second.repaired, second.failed, second.quarantined) == (1, 0, 1, 0)
    third = worker.run_once()
    assert (third.failed, third.quarantined) == (1, 1)
    state = installed.scalar(
        "select jsonb_build_object('attempts', attempts, 'quarantined',"
        " quarantined_at is not null, 'history', jsonb_array_length(history))"
        " from profileguard.repair_state where user_id = %s",
        (str(bad),),
    )
    assert state == {"attempts": 3, "quarantined": True, "history": 3}
    event = installed.scalar(
        "select jsonb_build_object('sqlstate', sqlstate, 'category', category,"
        " 'message', message) from profileguard.events"
        " where kind = 'quarantine' and user_id = %s",
        (str(bad),),
    )
    assert event["sqlstate"] == "23514"
    assert event["category"] == "constraint"
    assert CONSTRAINT in event["message"]

    # Quarantined users are left alone by passes.
    fourth = worker.run_once()
    assert (fourth.scanned, fourth.failed) == (0, 0)
    # Retrying while the cause is still there fails again, without crashing.
    assert worker.retry([bad]).repaired == 0
    assert (
        installed.scalar(
            "select attempts from profileguard.repair_state where user_id = %s", (str(bad),)
        )
        == 1
    )

    drop_bad_constraint(installed)
    # No longer quarantined after retry(): the next pass re-drives it.
    fifth = worker.run_once()
    assert (fifth.scanned, fifth.repaired, fifth.failed) == (1, 1, 0)
    assert has_profile(installed, bad)
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0
    assert_each_repaired_once(installed, 61)


def test_retry_all_quarantined_repairs_after_the_fix(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    add_bad_constraint(installed)
    bad = installed.signup({"full_name": BAD_NAME})
    worker = Worker(installed.settings, max_attempts=1, backoff_base=0.0)
    assert worker.run_once().quarantined == 1
    assert installed.scalar(
        "select quarantined_at is not null from profileguard.repair_state where user_id = %s",
        (str(bad),),
    )
    drop_bad_constraint(installed)
    assert worker.run_once().repaired == 0  # still quarantined

    assert worker.retry(all_quarantined=True).repaired == 1
    assert has_profile(installed, bad)
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0
    assert worker.retry(all_quarantined=True).repaired == 0


def test_backoff_defers_the_next_attempt(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    add_bad_constraint(installed)
    bad = installed.signup({"full_name": BAD_NAME})
    worker = Worker(installed.settings, backoff_base=3600.0, backoff_cap=3600.0)
    assert worker.run_once().failed == 1
    # Full jitter: somewhere in [failure time, failure time + 1 hour].
    assert installed.scalar(
        "select next_attempt_at between updated_at and updated_at + interval '1 hour'"
        " from profileguard.repair_state where user_id = %s",
        (str(bad),),
    )
    with installed.connect() as conn:
        conn.execute(
            "update profileguard.repair_state set next_attempt_at = now() + interval '1 hour'"
        )
    assert worker.run_once().scanned == 0


def test_run_once_reconnects_after_its_connection_is_killed(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    worker = Worker(installed.settings)
    installed.bulk_signup(10, prefix="first")
    assert worker.run_once().repaired == 10
    killed = installed.scalar(
        "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity"
        " where datname = current_database() and application_name = 'profileguard-worker'"
    )
    assert killed == 1
    installed.bulk_signup(10, prefix="second")
    assert worker.run_once().repaired == 10
    assert_each_repaired_once(installed, 20)
    worker.close()


@contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
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
        yield thread
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert errors == []


def fast_worker(db: TestDB, **kwargs: Any) -> Worker:
    """A worker with short intervals; `kwargs` override them."""
    options: dict[str, Any] = {
        "backoff_base": 0.2,
        "backoff_cap": 0.5,
        "incremental_interval": 0.5,
        "full_interval": 3600.0,
        "heartbeat_interval": 0.5,
        "poll_interval": 0.1,
        "max_attempts": 50,
    }
    return Worker(db.settings, **{**options, **kwargs})


def test_run_forever_repairs_a_failed_signup(installed: TestDB) -> None:
    worker = fast_worker(installed, worker_id="forever-1")
    with running(worker):
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select count(*) from profileguard.workers where worker_id = 'forever-1'"
                )
                == 1
            )
        )
        add_bad_constraint(installed)
        bad = installed.signup({"full_name": BAD_NAME})
        assert (
            installed.scalar(
                "select count(*) from profileguard.events where kind = 'failure' and user_id = %s",
                (str(bad),),
            )
            == 1
        )
        assert not has_profile(installed, bad)
        drop_bad_constraint(installed)
        assert wait_for(lambda: has_profile(installed, bad))
        ok = installed.signup({"full_name": "Fine"})
        assert has_profile(installed, ok)  # the trigger did this one
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and source = 'worker'"
            " and user_id = %s",
            (str(bad),),
        )
        == 1
    )
    assert (
        installed.scalar(
            "select stats->>'state' from profileguard.workers where worker_id = 'forever-1'"
        )
        == "stopped"
    )


def test_run_forever_fast_path_on_notification(installed: TestDB) -> None:
    # Incremental sweeps effectively off: only the notification can wake the worker.
    worker = Worker(
        installed.settings,
        incremental_interval=3600.0,
        full_interval=3600.0,
        heartbeat_interval=3600.0,
        poll_interval=0.1,
    )
    with running(worker):
        assert wait_for(lambda: worker.stats["passes"] >= 1)
        set_enabled(installed.settings, False)
        user = installed.signup({"full_name": "Quiet"})
        with installed.connect() as conn:
            conn.execute(
                "select profileguard.record_failure(%s, '40001', 'simulated', 'test')",
                (str(user),),
            )
            conn.execute("select pg_notify('profileguard', '{\"event\": \"failure\"}')")
        assert wait_for(lambda: has_profile(installed, user))
        assert worker.stats["notifications"] >= 1


def test_run_forever_recovers_from_terminated_connections(installed: TestDB) -> None:
    worker = fast_worker(installed, worker_id="forever-2")
    with running(worker):
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select count(*) from pg_stat_activity where datname = current_database()"
                    " and application_name = 'profileguard-worker'"
                )
                >= 2
            )
        )
        killed = installed.scalar(
            "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity"
            " where datname = current_database() and application_name = 'profileguard-worker'"
        )
        # Both are cut, but the worker may close its second connection itself on seeing the
        # first one die, before the second pg_terminate_backend() reaches it.
        assert killed >= 1
        assert wait_for(lambda: worker.stats["reconnects"] >= 1)
        add_bad_constraint(installed)
        bad = installed.signup({"full_name": BAD_NAME})
        drop_bad_constraint(installed)
        assert wait_for(lambda: has_profile(installed, bad))
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select count(*) from pg_stat_activity where datname = current_database()"
                    " and application_name = 'profileguard-worker'"
                )
                >= 2
            )
        )
    assert worker.stats["errors"] >= 1


def test_several_run_forever_workers_repair_each_user_once(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    workers = [
        Worker(
            installed.settings,
            worker_id=f"t{i}",
            batch_size=200,
            full_interval=0.2,
            incremental_interval=0.2,
            heartbeat_interval=0.2,
            poll_interval=0.05,
        )
        for i in range(3)
    ]
    with running(workers[0]), running(workers[1]), running(workers[2]):
        for round_ in range(5):
            installed.bulk_signup(1000, prefix=f"r{round_}-")
        assert wait_for(lambda: missing_profiles(installed) == 0)
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select count(*) from profileguard.workers where stats->>'state' = 'running'"
                )
                == 3
            )
        )
    assert_each_repaired_once(installed, 5000)
    assert sum(w.stats["repaired"] for w in workers) == 5000
    assert (
        installed.scalar(
            "select count(*) from profileguard.workers where stats->>'state' = 'stopped'"
        )
        == 3
    )


def test_worker_tables_are_not_reachable_by_clients(installed: TestDB) -> None:
    for table in ("repair_state", "workers"):
        assert installed.scalar(
            "select relrowsecurity from pg_class where oid = %s::regclass",
            (f"profileguard.{table}",),
        )
        for role in ("anon", "authenticated", "service_role"):
            assert not installed.scalar(
                "select has_table_privilege(%s, %s, 'select')", (role, f"profileguard.{table}")
            )


def test_invalid_arguments_are_rejected(installed: TestDB) -> None:
    from profileguard.errors import ConfigError

    with pytest.raises(ConfigError):
        Worker(installed.settings, batch_size=0)
    with pytest.raises(ConfigError):
        Worker(installed.settings, max_attempts=0)


def test_incremental_pass_repairs_a_failure_committed_after_a_later_one(installed: TestDB) -> None:
    """Event ids are taken at insert, not at commit: the cursor must not skip a failure whose
    transaction commits after a later-numbered one was already read."""
    set_enabled(installed.settings, False)
    early, late = installed.signup({"full_name": "Early"}), installed.signup({"full_name": "Late"})
    worker = Worker(installed.settings, full_interval=3600.0)
    worker.run_incremental()  # cursor at the current end of the trail
    slow = installed.connect(autocommit=False)
    try:
        slow.execute(
            "select profileguard.record_failure(%s, '40001', 'slow', 'test')", (str(early),)
        )  # takes the lower id, stays uncommitted
        with installed.connect() as conn:
            conn.execute(
                "select profileguard.record_failure(%s, '40001', 'fast', 'test')", (str(late),)
            )
        assert worker.run_incremental().repaired == 1  # sees only the committed one
        assert has_profile(installed, late) and not has_profile(installed, early)
        slow.commit()
    finally:
        slow.close()

    assert worker.run_incremental().repaired == 1
    assert has_profile(installed, early)
    worker.close()


def test_worker_repairs_the_installed_tables_not_a_changed_configuration(
    installed: TestDB,
) -> None:
    # The configuration now names another profile table, but nobody re-installed: the trigger
    # still serves public.profiles, so the worker must repair public.profiles too.
    with installed.connect() as conn:
        conn.execute("create table public.other_profiles (id uuid primary key, full_name text)")
    set_enabled(installed.settings, False)
    installed.bulk_signup(50)
    with installed.connect() as conn:
        # Every user "has a profile" in the configured table: scanning it would find nothing.
        conn.execute("insert into public.other_profiles (id) select id from auth.users")
    changed = installed.settings.with_overrides(profile=TableRef("public", "other_profiles", "id"))
    assert missing_profiles(installed) == 50

    worker = Worker(changed, batch_size=20)
    try:
        result = worker.run_once()
    finally:
        worker.close()

    assert (result.scanned, result.repaired) == (50, 50)
    assert str(worker.installation.profile) == "public.profiles"
    assert_each_repaired_once(installed, 50)
    assert installed.scalar("select count(*) from public.other_profiles") == 50


def test_a_notify_flood_from_an_unprivileged_role_starts_no_full_sweep(installed: TestDB) -> None:
    """NOTIFY needs no privilege: a role that may do nothing else sends 40 notifications of an
    unrecorded failure. The worker takes them as hints: no full sweep beyond its first, a few
    targeted looks; a failure the trigger really could not record (profile and events tables
    locked) is still found and repaired."""
    role = f"profileguard_test_noisy_{uuid.uuid4().hex[:8]}"
    with installed.connect_admin() as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    try:
        worker = fast_worker(installed, worker_id="notify-flood")
        with running(worker):
            assert wait_for(lambda: worker.stats["passes"] >= 1)
            noisy_url = make_conninfo(installed.admin_url or installed.url, user=role)
            with psycopg.connect(noisy_url, autocommit=True) as noisy:
                for _ in range(40):
                    noisy.execute("notify profileguard, '{\"recorded\": false}'")
            assert wait_for(lambda: worker.stats["notifications"] >= 40)
            assert wait_for(lambda: worker.stats["targeted_looks"] >= 1)

            # A real one: the trigger can neither create the profile nor record the failure.
            release = threading.Event()
            locked = threading.Event()

            def hold_locks() -> None:
                with psycopg.connect(installed.admin_url or installed.url) as conn:
                    conn.execute(
                        "lock table public.profiles, profileguard.events in access exclusive mode"
                    )
                    locked.set()
                    release.wait(30)

            holder = threading.Thread(target=hold_locks, daemon=True)
            holder.start()
            assert locked.wait(10)
            user = installed.signup({"full_name": "Unrecorded"})
            release.set()
            holder.join(10)
            assert wait_for(lambda: has_profile(installed, user), timeout=15)
        assert worker.stats["passes"] == 1  # the full sweep at start, none since
        assert 1 <= worker.stats["targeted_looks"] < 40
        assert (
            installed.scalar(
                "select count(*) from profileguard.events where kind = 'failure' and user_id = %s",
                (str(user),),
            )
            == 0
        )
    finally:
        with installed.connect_admin() as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))

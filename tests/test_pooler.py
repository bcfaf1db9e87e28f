"""profileguard behind a transaction-mode pooler: a real PgBouncer (pool_mode = transaction) in
front of the server under test. There nothing outlives a transaction. Nothing is prepared on any
connection and the backfill holds its run by a lease, told or not; the worker polls instead of
LISTENing (and sets nothing in the session) when told `pooler = "transaction"` or when it sees a
pooler while the setting is not set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from conftest import TestDB, wait_for
from pgbouncer import pgbouncer
from test_cli import cli
from test_worker import (
    BAD_NAME,
    add_bad_constraint,
    assert_each_repaired_once,
    drop_bad_constraint,
    has_profile,
    missing_profiles,
)
from test_worker_process import stop_gracefully

from profileguard.backfill import BackfillBusyError, Options, Report, lease, run_backfill
from profileguard.client import ProfileGuard
from profileguard.config import load_settings
from profileguard.db import connect, keeps_session, through_pooler
from profileguard.install import set_enabled
from profileguard.repair import Worker

QUERY = "select %s::int + 1"


def test_prepared_statements_break_behind_pgbouncer_but_profileguard_prepares_none(
    db: TestDB,
) -> None:
    """The failure psycopg's default meets, reproduced: it prepares a statement after 5
    executions on one server connection; the next transaction gets another one. profileguard's
    connections prepare nothing, with or without the pooler setting."""
    with pgbouncer(db) as bouncer:

        def prepare_then_move(conn: psycopg.Connection) -> None:
            for n in range(8):  # prepared from the 6th execution on, on server connection 1
                assert conn.execute(QUERY, (n,)).fetchone() == (n + 1,)
            with psycopg.connect(bouncer.url) as other:
                other.execute("select 1")  # holds server connection 1 in its transaction
                conn.execute(QUERY, (41,))  # so this one is sent on server connection 2

        with (
            psycopg.connect(bouncer.url, autocommit=True) as plain,
            pytest.raises(psycopg.errors.InvalidSqlStatementName),
        ):
            prepare_then_move(plain)
        for pooler in ("transaction", None):
            with connect(bouncer.settings(pooler), autocommit=True) as pooled:
                prepare_then_move(pooled)
                assert pooled.execute(QUERY, (41,)).fetchone() == (42,)


def test_a_pooler_is_seen_on_the_connection(db: TestDB) -> None:
    """PgBouncer hands each client a cancel key of its own; PostgreSQL gives its backend's pid.
    Through a pooler whose mode is not set, nothing is kept in the session."""
    direct_settings = load_settings(env={}, database_url=db.url)
    with pgbouncer(db) as bouncer, psycopg.connect(db.url, autocommit=True) as direct:
        assert not through_pooler(direct)
        assert keeps_session(direct_settings, direct)
        assert not keeps_session(direct_settings.with_overrides(pooler="transaction"), direct)
        for _ in range(3):  # each client gets another key
            with psycopg.connect(bouncer.url, autocommit=True, prepare_threshold=None) as pooled:
                assert through_pooler(pooled)
                assert not keeps_session(bouncer.settings(None), pooled)
                assert not keeps_session(bouncer.settings("transaction"), pooled)
                # Told it is a session-mode pooler, profileguard believes it.
                assert keeps_session(bouncer.settings("session"), pooled)


def _worker_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }


def test_workers_behind_pgbouncer_repair_each_user_once_by_polling(installed: TestDB) -> None:
    users = 3000
    set_enabled(installed.settings, False)
    installed.bulk_signup(users)
    set_enabled(installed.settings, True)
    with pgbouncer(installed) as bouncer:
        # Worker 1: the command, told by its flag; worker 2: the library, not told.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "profileguard",
                "--database-url",
                bouncer.url,
                "worker",
                "--pooler",
                "transaction",
                "--batch-size",
                "100",
                "--worker-id",
                "bounced-cli",
                "--incremental-interval",
                "0.2",
                "--full-interval",
                "3600",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_worker_env(),
            stdin=subprocess.DEVNULL,
        )
        stop = threading.Event()
        # (Not told: it sees the pooler.)
        second = Worker(
            bouncer.settings(None),
            worker_id="bounced-lib",
            batch_size=100,
            incremental_interval=0.2,
            full_interval=3600.0,
            heartbeat_interval=0.5,
            poll_interval=0.1,
        )
        thread = threading.Thread(target=second.run_forever, args=(stop,), daemon=True)
        try:
            thread.start()
            # Both workers take part (the process registers once it has started).
            assert wait_for(
                lambda: (
                    installed.scalar(
                        "select count(*) from profileguard.workers"
                        " where worker_id in ('bounced-cli', 'bounced-lib')"
                    )
                    == 2
                ),
                timeout=60,
            )
            assert wait_for(lambda: missing_profiles(installed) == 0, timeout=120)
            # A failed sign-up reaches the workers by polling (no LISTEN, no full sweep due).
            add_bad_constraint(installed)
            bad = installed.signup({"full_name": BAD_NAME})
            assert not has_profile(installed, bad)
            drop_bad_constraint(installed)
            assert wait_for(lambda: has_profile(installed, bad), timeout=60)
        finally:
            stop.set()
            thread.join(timeout=60)
            code, _out, stderr = stop_gracefully(proc)
        assert not thread.is_alive()
        assert code == 0, stderr
        assert "error" not in stderr.lower(), stderr
        assert second.stats["errors"] == 0, second.stats["last_error"]
        assert second.stats["notifications"] == 0
    assert_each_repaired_once(installed, users + 1)
    assert (
        installed.scalar(
            "select count(*) from profileguard.workers where stats->>'state' = 'stopped'"
            " and worker_id = 'bounced-lib'"
        )
        == 1
    )
    # The worker process, stopped cleanly, left profileguard.workers.
    assert (
        installed.scalar(
            "select count(*) from profileguard.workers where worker_id = 'bounced-cli'"
        )
        == 0
    )


def test_backfill_behind_pgbouncer_runs_once_at_a_time(installed: TestDB) -> None:
    users = 4000
    set_enabled(installed.settings, False)
    installed.bulk_signup(users)
    with pgbouncer(installed) as bouncer:
        settings = bouncer.settings()
        stop = threading.Event()
        reports: list[Report] = []
        errors: list[BaseException] = []
        slow = Options(
            batch_size=200,
            min_batch_size=100,
            max_batch_size=200,
            max_rows_per_second=2000,
            workers=2,
        )

        def first() -> None:
            try:
                reports.append(run_backfill(settings, slow, stop_event=stop))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=first, daemon=True)
        thread.start()
        try:
            assert wait_for(
                lambda: (
                    installed.scalar(
                        "select count(*) from profileguard.backfill_runs"
                        " where state = 'running' and batches > 0"
                    )
                    == 1
                )
            )
            # A second backfill while the first one runs: refused, nothing done twice.
            with pytest.raises(BackfillBusyError, match="another backfill is running"):
                run_backfill(settings, Options())
        finally:
            thread.join(timeout=120)
        assert not thread.is_alive() and errors == []
        assert missing_profiles(installed) == 0
        assert installed.scalar("select count(*) from public.profiles") == users
        assert [(r.state, r.created) for r in reports] == [("completed", users)]
        assert installed.scalar("select array_agg(state) from profileguard.backfill_runs") == [
            "completed"
        ]

        # A run held from another host: refused while its heartbeat is recent (its process
        # cannot be looked at from here), taken over once it is older than the lease.
        with installed.connect() as conn:
            conn.execute(
                "delete from public.profiles where id in"
                " (select id from auth.users order by id limit 10)"
            )
            conn.execute(
                "insert into profileguard.backfill_runs (state, dry_run, total_estimate,"
                " batch_size, owner, ordering, phase, heartbeat_at)"
                " values ('running', false, 0, 100, 'elsewhere:1:abc', 'pages', 'sweep', now())"
            )
        with pytest.raises(BackfillBusyError, match="owned by elsewhere:1:abc") as busy:
            run_backfill(bouncer.settings(None), Options(workers=1))
        assert "heartbeat" in str(busy.value) and "--resume" in (busy.value.hint or "")
        with installed.connect() as conn:
            conn.execute(
                "update profileguard.backfill_runs set heartbeat_at = now() - interval '1 hour'"
                " where owner = 'elsewhere:1:abc'"
            )
        report = run_backfill(bouncer.settings(None), Options(workers=1))
        assert report.state == "completed" and report.created == 10
        taken = installed.scalar(
            "select jsonb_build_object('state', state, 'by', detail->>'taken_over_by')"
            " from profileguard.backfill_runs where owner = 'elsewhere:1:abc'"
        )
        assert taken["state"] == "interrupted" and taken["by"]
        assert (
            installed.scalar(
                "select state from profileguard.backfill_runs where owner = %s", (taken["by"],)
            )
            == "completed"
        )


def test_pooler_setting_values(installed: TestDB) -> None:
    """The setting is a hint (nothing needs it to be safe) and takes two values."""
    bad = cli(installed, "worker", "--once", "--pooler", "statement")
    assert bad.returncode == 2 and "pooler" in bad.stderr
    told = cli(installed, "backfill", "--pooler", "transaction", "--json")
    assert told.returncode == 0, told.stderr
    env_told = load_settings(env={"PROFILEGUARD_POOLER": "transaction"}, database_url=installed.url)
    assert env_told.transaction_pooler
    assert Worker(env_told).settings.pooler == "transaction"


def test_throttled_backfill_behind_pgbouncer_renews_its_lease_while_it_waits(
    installed: TestDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease, "BEAT_SECONDS", 0.1)
    set_enabled(installed.settings, False)
    installed.bulk_signup(600)
    with pgbouncer(installed) as bouncer:
        seen: set[tuple[object, object]] = set()
        done = threading.Event()
        options = Options(
            batch_size=100,
            min_batch_size=100,
            max_batch_size=100,
            max_rows_per_second=200,
            workers=1,
        )

        def watch() -> None:
            while not done.is_set():
                with installed.connect() as conn:
                    row = conn.execute(
                        "select updated_at, heartbeat_at from profileguard.backfill_runs"
                        " where state = 'running'"
                    ).fetchone()
                if row is not None:
                    seen.add((row[0], row[1]))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            report = run_backfill(bouncer.settings(None), options)
        finally:
            done.set()
            watcher.join(timeout=30)
    assert report.state == "completed" and report.created == 600
    # The heartbeat renewed the lease during the throttle's waits (~3 s in all), while the
    # checkpoint stood still: one checkpoint seen with several heartbeats.
    beats: dict[object, set[object]] = {}
    for checkpoint, beat in seen:
        beats.setdefault(checkpoint, set()).add(beat)
    assert max(len(b) for b in beats.values()) >= 2, sorted(seen, key=str)


def test_the_library_behind_pgbouncer_ensures_profiles_with_nothing_prepared(
    installed: TestDB,
) -> None:
    set_enabled(installed.settings, False)
    installed.bulk_signup(20)
    with installed.connect() as conn:
        ids = [r[0] for r in conn.execute("select id from auth.users order by id")]
    with (
        pgbouncer(installed, pool_size=2) as bouncer,
        ProfileGuard(bouncer.settings(), max_size=4) as guard,
    ):
        errors: list[BaseException] = []

        def ensure_all() -> None:
            try:
                for _ in range(3):  # the same statements, many times, over 2 server connections
                    for uid in ids:
                        assert guard.ensure(uid)["id"] == str(uid)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ensure_all) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
    assert missing_profiles(installed) == 0
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and source = 'client'"
        )
        == 20
    )


CLEAN = ([], "0", '"$user", public')


def _session_state(bouncer_url: str) -> tuple[list[str], str, str]:
    """The channels LISTENed to, the lock_timeout and the search_path of the server connection
    a client of the pooler gets."""
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute(
            "select array(select pg_listening_channels()), current_setting('lock_timeout'),"
            " current_setting('search_path')"
        ).fetchone()
    assert row is not None
    return list(row[0]), str(row[1]), str(row[2])


def test_worker_through_pgbouncer_not_told_leaves_nothing_in_the_session(
    installed: TestDB,
) -> None:
    """One server connection behind the pooler: whatever a worker left in its session, the next
    client would get. Not told, the worker sees the pooler and keeps nothing there."""
    set_enabled(installed.settings, False)
    installed.bulk_signup(300)
    with pgbouncer(installed, pool_size=1) as bouncer:
        assert _session_state(bouncer.url) == CLEAN
        stop = threading.Event()
        worker = Worker(
            bouncer.settings(None),
            worker_id="not-told",
            batch_size=100,
            incremental_interval=0.2,
            full_interval=3600.0,
            heartbeat_interval=0.5,
            poll_interval=0.1,
        )
        thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
        thread.start()
        try:
            assert wait_for(lambda: missing_profiles(installed) == 0, timeout=120)
            assert _session_state(bouncer.url) == CLEAN
        finally:
            stop.set()
            thread.join(timeout=60)
        assert not thread.is_alive()
        assert worker.stats["errors"] == 0, worker.stats["last_error"]
        assert _session_state(bouncer.url) == CLEAN
    # Through the direct connection the same worker LISTENs (and bounds its lock waits).
    direct = Worker(installed.settings, worker_id="direct")
    try:
        conn = direct.db.get()
        assert keeps_session(installed.settings, conn)
        assert conn.execute("select current_setting('lock_timeout')").fetchone() == ("1s",)
    finally:
        direct.close()


def _neighbour(url: str, stop: threading.Event) -> None:
    """Another client of the pooler with psycopg's defaults: it prepares its statements (a
    smallint parameter, as in the field) on whichever server connection it gets."""
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute("select %s::smallint + 1", (7,))
        except psycopg.Error:
            stop.wait(0.05)  # its own prepared statements break: its problem, not ours


def _advisory_locks(db: TestDB) -> int:
    return int(
        db.scalar(
            "select count(*) from pg_locks where locktype = 'advisory'"
            " and database = (select oid from pg_database where datname = current_database())"
        )
    )


def test_backfill_through_pgbouncer_not_told_completes_and_leaves_no_lock(
    installed: TestDB,
) -> None:
    users = 6000
    set_enabled(installed.settings, False)
    installed.bulk_signup(users)
    with pgbouncer(installed, pool_size=3) as bouncer:
        stop = threading.Event()
        neighbour = threading.Thread(target=_neighbour, args=(bouncer.url, stop), daemon=True)
        neighbour.start()
        try:
            result = cli(
                None,
                "--database-url",
                bouncer.url,
                "backfill",
                "--batch-size",
                "200",
                "--max-batch-size",
                "200",
                "--json",
            )
        finally:
            stop.set()
            neighbour.join(timeout=30)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["state"], report["created"], report["failed"]) == ("completed", users, 0)
        assert report["batches"] > 5  # far more statements than psycopg's prepare threshold
        # Nothing stays on the pooler's server connections: no lock, no session setting.
        assert _advisory_locks(installed) == 0
        assert _session_state(bouncer.url) == CLEAN
    assert missing_profiles(installed) == 0
    # A backfill through the direct connection starts at once.
    again = run_backfill(installed.settings, Options(workers=1))
    assert (again.state, again.created) == ("completed", 0)


def test_killed_backfill_through_pgbouncer_is_taken_over_at_once(installed: TestDB) -> None:
    """A backfill process killed mid-run leaves its run 'running' with a recent heartbeat; its
    host sees the process gone, so a new run takes it over at once (no lease to wait out)."""
    users = 20_000
    set_enabled(installed.settings, False)
    installed.bulk_signup(users)
    with pgbouncer(installed) as bouncer:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "profileguard",
                "--database-url",
                bouncer.url,
                "backfill",
                "--batch-size",
                "200",
                "--max-batch-size",
                "200",
                "--max-rows-per-second",
                "2000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_worker_env(),
            stdin=subprocess.DEVNULL,
        )
        try:
            assert wait_for(
                lambda: bool(
                    installed.scalar(
                        "select exists (select from profileguard.backfill_runs"
                        " where state = 'running' and batches > 1)"
                    )
                ),
                timeout=60,
            )
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        killed = installed.scalar(
            "select jsonb_build_object('id', id, 'owner', owner, 'scanned', scanned,"
            " 'fresh', heartbeat_at > now() - interval '1 minute')"
            " from profileguard.backfill_runs where state = 'running'"
        )
        assert killed["owner"].split(":")[1] == str(proc.pid) and killed["fresh"] is True
        assert killed["scanned"] < users
        # Its lease is recent, yet the run is taken over (and continued) at once.
        resumed = cli(None, "--database-url", bouncer.url, "backfill", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert (report["run_id"], report["state"], report["resumed"]) == (
        killed["id"],
        "completed",
        True,
    )
    assert (report["scanned"], report["created"]) == (users, users)
    assert missing_profiles(installed) == 0
    assert _advisory_locks(installed) == 0


def test_backfill_through_pgbouncer_keeps_its_run_when_its_server_connections_die(
    installed: TestDB,
) -> None:
    """pg_terminate_backend on every server connection behind the pooler mid-run: the backfill
    reconnects and goes on, still holding its run (a second one is refused meanwhile)."""
    users = 6000
    set_enabled(installed.settings, False)
    installed.bulk_signup(users)
    with pgbouncer(installed) as bouncer:
        reports: list[Report] = []
        errors: list[BaseException] = []
        options = Options(
            batch_size=200, min_batch_size=100, max_batch_size=200, max_rows_per_second=3000
        )

        def run() -> None:
            try:
                reports.append(run_backfill(bouncer.settings(None), options))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            assert wait_for(
                lambda: bool(
                    installed.scalar(
                        "select exists (select from profileguard.backfill_runs"
                        " where state = 'running' and batches > 1)"
                    )
                ),
                timeout=60,
            )
            killed = installed.scalar(
                "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity"
                " where datname = current_database() and pid <> pg_backend_pid()"
                " and backend_type = 'client backend'"
            )
            assert killed >= 1
            with pytest.raises(BackfillBusyError, match="another backfill is running"):
                run_backfill(installed.settings, Options())
        finally:
            thread.join(timeout=120)
    assert not thread.is_alive() and errors == []
    assert [(r.state, r.created, r.resumed) for r in reports] == [("completed", users, False)]
    assert installed.scalar("select count(*) from profileguard.backfill_runs") == 1
    assert missing_profiles(installed) == 0

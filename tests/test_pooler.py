"""profileguard behind a transaction-mode pooler: a real PgBouncer (pool_mode = transaction) in
front of the server under test. There nothing outlives a transaction: with `pooler =
"transaction"` the worker polls instead of LISTENing, the backfill claims its run instead of
holding a session lock, and nothing is prepared."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from conftest import TestDB, wait_for
from pgbouncer import pgbouncer
from test_cli import cli
from test_reconcile import (
    BAD_NAME,
    add_bad_constraint,
    assert_each_repaired_once,
    drop_bad_constraint,
    has_profile,
    missing_profiles,
)
from test_worker_process import stop_gracefully

from profileguard.backfill import BackfillBusyError, Options, Report, run_backfill, sizing
from profileguard.client import ProfileGuard
from profileguard.config import load_settings
from profileguard.db import connect
from profileguard.errors import ConfigError
from profileguard.install import set_enabled
from profileguard.repair import Reconciler

QUERY = "select %s::int + 1"


def test_prepared_statements_break_behind_pgbouncer_unless_the_setting_is_on(
    db: TestDB,
) -> None:
    """The failure the setting prevents, reproduced: psycopg prepares a statement after 5
    executions on one server connection; the next transaction gets another one."""
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
        with connect(bouncer.settings(), autocommit=True) as pooled:
            prepare_then_move(pooled)
            assert pooled.execute(QUERY, (41,)).fetchone() == (42,)


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
        # Worker 1: the command, told by its flag; worker 2: the library, told by settings.
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
        second = Reconciler(
            bouncer.settings(),
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

        # A run whose process died: 'running' in the table, no checkpoint within the lease.
        with installed.connect() as conn:
            conn.execute(
                "delete from public.profiles where id in"
                " (select id from auth.users order by id limit 10)"
            )
            conn.execute(
                "insert into profileguard.backfill_runs (state, dry_run, total_estimate,"
                " batch_size, owner, ordering, phase, updated_at)"
                " values ('running', false, 0, 100, 'gone:1', 'pages', 'sweep',"
                " now() - interval '1 hour')"
            )
        report = run_backfill(settings, Options(workers=1))
        assert report.state == "completed" and report.created == 10
        assert (
            installed.scalar("select state from profileguard.backfill_runs where owner = 'gone:1'")
            == "interrupted"
        )


def test_transaction_pooler_port_without_the_setting_fails_clearly(installed: TestDB) -> None:
    url = "postgresql://postgres@127.0.0.1:6543/postgres"
    settings = load_settings(env={}, database_url=url)
    with pytest.raises(ConfigError, match="transaction-mode") as caught:
        Reconciler(settings)
    assert "--pooler transaction" in (caught.value.hint or "")
    with pytest.raises(ConfigError, match="transaction-mode"):
        run_backfill(settings, Options())
    for command in (["worker", "--once"], ["backfill"], ["retry", "--all-quarantined"]):
        result = cli(None, "--database-url", url, *command)
        assert result.returncode == 2, result.stderr
        assert f"{command[0]} --pooler transaction" in " ".join(result.stderr.split())
        assert "5432" in result.stderr
    # Told which pooler it is, the worker goes on (and here finds nothing listening).
    started = time.monotonic()
    told = cli(None, "--database-url", url, "worker", "--once", "--pooler", "session")
    assert told.returncode == 4, told.stderr
    assert time.monotonic() - started < 120
    bad = cli(None, "--database-url", url, "worker", "--once", "--pooler", "statement")
    assert bad.returncode == 2 and "pooler" in bad.stderr
    env_told = load_settings(env={"PROFILEGUARD_POOLER": "transaction"}, database_url=url)
    assert env_told.transaction_pooler
    assert Reconciler(env_told).settings.pooler == "transaction"


def test_throttled_backfill_behind_pgbouncer_renews_its_lease_while_it_waits(
    installed: TestDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sizing, "BEAT_SECONDS", 0.1)
    set_enabled(installed.settings, False)
    installed.bulk_signup(600)
    with pgbouncer(installed) as bouncer:
        seen: set[object] = set()
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
                seen.add(
                    installed.scalar(
                        "select updated_at from profileguard.backfill_runs where state = 'running'"
                    )
                )
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            report = run_backfill(bouncer.settings(), options)
        finally:
            done.set()
            watcher.join(timeout=30)
    assert report.state == "completed" and report.created == 600
    seen.discard(None)
    # Each batch checkpoints; the waits between them (~3 s in all) renewed the lease too.
    assert len(seen) > report.batches + 5, (len(seen), report.batches)


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

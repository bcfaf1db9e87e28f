"""`profileguard worker` and `retry` as real processes: SIGKILL, SIGTERM, a server restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from conftest import TestDB
from test_cli import cli
from test_worker import (
    BAD_NAME,
    add_bad_constraint,
    assert_each_repaired_once,
    drop_bad_constraint,
    missing_profiles,
    wait_for,
)

from profileguard import sql as sqlfiles
from profileguard.config import load_settings
from profileguard.embedded import EmbeddedPostgres
from profileguard.install import install, set_enabled

FAST = ["--incremental-interval", "0.2", "--full-interval", "0.5"]


@contextmanager
def worker_process(url: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`profileguard worker …` in the background; killed if the test leaves it running."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "profileguard", "--database-url", url, "worker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def stop_gracefully(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stdout, stderr


def test_worker_once_json_repairs_users_inserted_with_the_trigger_disabled(
    installed: TestDB,
) -> None:
    assert cli(installed, "disable").returncode == 0
    installed.bulk_signup(1000)
    assert missing_profiles(installed) == 1000

    done = cli(installed, "worker", "--once", "--json", "--batch-size", "300")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {k: report[k] for k in ("scanned", "repaired", "failed", "quarantined", "batches")} == {
        "scanned": 1000,
        "repaired": 1000,
        "failed": 0,
        "quarantined": 0,
        "batches": 4,
    }
    assert_each_repaired_once(installed, 1000)


def test_sigkilled_worker_loses_its_batch_and_another_finishes(installed: TestDB) -> None:
    users, batch = 30_000, 5_000
    set_enabled(installed.settings, False)
    installed.bulk_signup(users)

    def repairs() -> int:
        return int(
            installed.scalar("select count(*) from profileguard.events where kind = 'repair'")
        )

    def in_batch() -> bool:
        return bool(
            installed.scalar(
                "select count(*) > 0 from pg_stat_activity where datname = current_database()"
                " and application_name = 'profileguard-worker' and xact_start is not null"
                " and state <> 'idle'"
            )
        )

    with worker_process(installed.url, "--batch-size", str(batch), "--worker-id", "doomed") as proc:
        assert wait_for(lambda: repairs() > 0 and in_batch(), timeout=60, interval=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    created = int(installed.scalar("select count(*) from public.profiles"))
    assert 0 < created < users
    assert created % batch == 0  # the batch in hand was rolled back whole, not half-done

    done = cli(installed, "worker", "--once", "--json", "--worker-id", "survivor")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["repaired"] == users - created
    assert_each_repaired_once(installed, users)


def test_retry_command_redrives_quarantined_users_after_the_fix(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    add_bad_constraint(installed)
    bad = installed.signup({"full_name": BAD_NAME})

    first = cli(installed, "worker", "--once", "--json", "--max-attempts", "1")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["quarantined"] == 1
    assert (
        installed.scalar(
            "select last_sqlstate from profileguard.repair_state where user_id = %s and"
            " quarantined_at is not null",
            (str(bad),),
        )
        == "23514"
    )

    assert cli(installed, "retry").returncode == 2  # neither ids nor --all-quarantined
    drop_bad_constraint(installed)
    again = cli(installed, "retry", "--all-quarantined", "--json")

    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["repaired"] == 1
    assert missing_profiles(installed) == 0
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0


@pytest.fixture
def own_server() -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A server of this test's own, so that restarting it disturbs nothing else."""
    with EmbeddedPostgres() as server:
        url = server.uri()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
        yield server, url


def test_worker_survives_terminated_connections_and_a_server_restart(
    own_server: tuple[EmbeddedPostgres, str],
) -> None:
    server, url = own_server
    settings = load_settings(env={}, database_url=url)
    install(settings, create_profile_table=True, enabled=False)
    db = TestDB(url, settings)

    with worker_process(url, *FAST, "--worker-id", "phoenix") as proc:
        db.bulk_signup(500, prefix="before")
        assert wait_for(lambda: missing_profiles(db) == 0)

        killed = db.scalar(
            "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity"
            " where application_name = 'profileguard-worker'"
        )
        assert killed >= 1
        db.bulk_signup(500, prefix="between")
        assert wait_for(lambda: missing_profiles(db) == 0)

        server.restart()
        db.bulk_signup(500, prefix="after")
        assert wait_for(lambda: missing_profiles(db) == 0, timeout=60)
        assert proc.poll() is None  # it never gave up

        code, _, stderr = stop_gracefully(proc)

    assert code == 0, stderr
    assert "SIGTERM" in stderr
    assert_each_repaired_once(db, 1500)
    # Stopped cleanly, it left profileguard.workers.
    assert db.scalar("select count(*) from profileguard.workers where worker_id = 'phoenix'") == 0

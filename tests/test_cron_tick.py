"""`install --schedule pg_cron` for real: a private PostgreSQL 15 cluster preloading pg_cron
ticks the sweep, which repairs users that have no profile; `sql --schedule pg_cron` renders the
same job, and `sql --uninstall` its removal.

pg_cron 1.4 runs jobs at most once a minute, so this takes one to two minutes; it is marked
`once` and CI runs it in one pass only (it does not use the server under test).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import TestDB, wait_for
from pgcluster import INSTALL_HINT, private_cluster
from psycopg.conninfo import make_conninfo
from test_cli import cli
from test_worker import missing_profiles

from profileguard import sql as sqlfiles
from profileguard.config import load_settings

CRON_DATABASE = "profileguard_cron"
PG_CRON = Path("/usr/lib/postgresql/15/lib/pg_cron.so")
USERS = 200
TICK_TIMEOUT = 150.0

pytestmark = pytest.mark.once


@pytest.fixture
def cron_db() -> Iterator[TestDB]:
    """A Supabase-shaped database on a private cluster whose pg_cron runs jobs in it."""
    if not PG_CRON.exists():
        pytest.fail(
            f"{PG_CRON} is missing (Debian package postgresql-15-cron); {INSTALL_HINT}",
            pytrace=False,
        )
    # pg_cron runs each job through a libpq connection to cron.host (trusted on 127.0.0.1).
    with private_cluster(
        {
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": CRON_DATABASE,
            "cron.host": "127.0.0.1",
        }
    ) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"create database {CRON_DATABASE}")
        url = make_conninfo(dsn, dbname=CRON_DATABASE)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
        yield TestDB(url, load_settings(env={}, database_url=url))


def cron_repairs(db: TestDB) -> int:
    return int(
        db.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and source = 'cron'"
        )
    )


def finished_runs(db: TestDB) -> list[tuple[str, str]]:
    """(status, return message) of the sweep's finished pg_cron runs."""
    with db.connect() as conn:
        return conn.execute(
            "select d.status, coalesce(d.return_message, '') from cron.job_run_details d"
            " join cron.job j using (jobid) where j.jobname = 'profileguard-sweep'"
            " and d.status in ('succeeded', 'failed') order by d.runid"
        ).fetchall()


def test_pg_cron_ticks_the_sweep_and_it_repairs_users(cron_db: TestDB) -> None:
    done = cli(
        cron_db,
        "install",
        "--create-profile-table",
        "--disabled",
        "--schedule",
        "pg_cron",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert (
        cron_db.scalar(
            "select schedule || ' ' || command from cron.job where jobname = 'profileguard-sweep'"
        )
        == "* * * * * select profileguard.sweep(10000)"
    )
    cron_db.bulk_signup(USERS)  # the trigger is off: nobody gets a profile at sign-up
    assert missing_profiles(cron_db) == USERS

    started = time.monotonic()
    wait_for(lambda: bool(finished_runs(cron_db)), timeout=TICK_TIMEOUT, interval=1.0)
    waited = time.monotonic() - started
    runs = finished_runs(cron_db)
    repaired = cron_repairs(cron_db)
    print(f"pg_cron: first tick repaired {repaired} users after {waited:.0f} s; runs: {runs}")
    assert runs, f"pg_cron ran no sweep within {TICK_TIMEOUT:.0f} s"
    assert runs[0] == ("succeeded", "1 row"), runs
    # One tick handles up to 10,000 users: all 200 were repaired, each once.
    assert repaired == USERS
    assert missing_profiles(cron_db) == 0
    assert (
        cron_db.scalar(
            "select count(*) from (select user_id from profileguard.events where kind = 'repair'"
            " group by user_id having count(*) > 1) d"
        )
        == 0
    )

    assert cli(cron_db, "uninstall", "--yes").returncode == 0
    assert cron_db.scalar("select count(*) from cron.job where jobname = 'profileguard-sweep'") == 0


def test_sql_renders_the_schedule_and_its_removal(cron_db: TestDB, tmp_path: Path) -> None:
    """`sql --schedule pg_cron` renders what `install --schedule pg_cron` runs, and the rendered
    rollback removes the job, as uninstall does."""
    job = "select schedule || ' ' || command from cron.job where jobname = 'profileguard-sweep'"
    done = cli(
        cron_db,
        "sql",
        "--create-profile-table",
        "--schedule",
        "pg_cron",
        "--cron-schedule",
        "*/5 * * * *",
    )
    assert done.returncode == 0, done.stderr
    assert "select cron.schedule('profileguard-sweep', '*/5 * * * *'" in done.stdout
    assert cron_db.scalar("select to_regclass('cron.job')") is None  # nothing was run
    for name, text in (("install.sql", done.stdout), ("uninstall.sql", None)):
        if text is None:
            rollback = cli(cron_db, "sql", "--uninstall")
            assert rollback.returncode == 0, rollback.stderr
            text = rollback.stdout
        path = tmp_path / name
        path.write_text(text)
        applied = subprocess.run(
            ["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", cron_db.url, "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert applied.returncode == 0, applied.stderr
        if name == "install.sql":
            assert cron_db.scalar(job) == "*/5 * * * * select profileguard.sweep(10000)"
    assert cron_db.scalar(job) is None
    assert cron_db.scalar("select to_regnamespace('profileguard')") is None


def test_scheduling_again_replaces_the_job_of_the_former_name(cron_db: TestDB) -> None:
    """A job an earlier version scheduled (profileguard-reconcile, calling reconcile()) gives way
    to the sweep's job: one job, never both."""
    with cron_db.connect() as conn:
        conn.execute("create extension if not exists pg_cron")
        conn.execute(
            "select cron.schedule('profileguard-reconcile', '* * * * *',"
            " 'select profileguard.reconcile(10000)')"
        )
    done = cli(cron_db, "install", "--create-profile-table", "--schedule", "pg_cron")
    assert done.returncode == 0, done.stderr
    assert cron_db.scalar("select array_agg(jobname::text order by jobname) from cron.job") == [
        "profileguard-sweep"
    ]

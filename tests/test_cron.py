"""The in-database sweep profileguard.sweep() (and its former name reconcile()), and
`install --schedule pg_cron`."""

from __future__ import annotations

import psycopg
import pytest
from conftest import TestDB
from test_cli import cli
from test_worker import (
    BAD_NAME,
    add_bad_constraint,
    drop_bad_constraint,
    has_profile,
    missing_profiles,
)

from profileguard.install import set_enabled


def sweep(db: TestDB, max_rows: int, max_attempts: int = 5) -> dict[str, int]:
    result = db.scalar("select profileguard.sweep(%s, %s)", (max_rows, max_attempts))
    assert isinstance(result, dict)
    return result


def test_sweep_repairs_at_most_max_rows_per_call(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    installed.bulk_signup(250)

    assert sweep(installed, 100) == {"scanned": 100, "repaired": 100}
    assert missing_profiles(installed) == 150
    assert sweep(installed, 100) == {"scanned": 100, "repaired": 100}
    assert sweep(installed, 100) == {"scanned": 50, "repaired": 50}
    assert sweep(installed, 100) == {"scanned": 0, "repaired": 0}
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and source = 'cron'"
        )
        == 250
    )
    assert (
        installed.scalar(
            "select count(*) from (select user_id from profileguard.events where kind = 'repair'"
            " group by user_id having count(*) > 1) d"
        )
        == 0
    )


def test_sweep_isolates_a_failing_user_and_quarantines_it(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    installed.bulk_signup(63)
    add_bad_constraint(installed)
    bad = installed.signup({"full_name": BAD_NAME})

    assert sweep(installed, 1000, max_attempts=1) == {"scanned": 64, "repaired": 63}

    assert not has_profile(installed, bad)
    state = installed.scalar(
        "select jsonb_build_object('attempts', attempts, 'sqlstate', last_sqlstate,"
        " 'quarantined', quarantined_at is not null) from profileguard.repair_state"
        " where user_id = %s",
        (str(bad),),
    )
    assert state == {"attempts": 1, "sqlstate": "23514", "quarantined": True}
    assert (
        installed.scalar(
            "select source from profileguard.events where kind = 'quarantine' and user_id = %s",
            (str(bad),),
        )
        == "cron"
    )
    # Quarantined users are skipped by later sweeps.
    assert sweep(installed, 1000) == {"scanned": 0, "repaired": 0}

    drop_bad_constraint(installed)
    redo = cli(installed, "retry", "--all-quarantined", "--json")
    assert redo.returncode == 0, redo.stderr
    assert has_profile(installed, bad)
    assert missing_profiles(installed) == 0


def test_sweep_backs_off_a_user_that_failed_once(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    add_bad_constraint(installed)
    bad = installed.signup({"full_name": BAD_NAME})
    assert sweep(installed, 10) == {"scanned": 1, "repaired": 0}
    assert (
        installed.scalar(
            "select attempts from profileguard.repair_state where user_id = %s", (str(bad),)
        )
        == 1
    )
    # Due again only after its backoff; force it due and the attempt is counted again.
    with installed.connect() as conn:
        conn.execute("update profileguard.repair_state set next_attempt_at = now()")
    sweep(installed, 10)
    assert (
        installed.scalar(
            "select attempts from profileguard.repair_state where user_id = %s", (str(bad),)
        )
        == 2
    )


def test_the_former_name_reconcile_runs_the_sweep(installed: TestDB) -> None:
    """pg_cron jobs scheduled by earlier versions call profileguard.reconcile(): still a sweep."""
    set_enabled(installed.settings, False)
    users = [installed.signup({"full_name": f"Old Job {i}"}) for i in range(3)]
    set_enabled(installed.settings, True)
    result = installed.scalar("select profileguard.reconcile(2)")
    assert result["repaired"] == 2
    assert sum(has_profile(installed, u) for u in users) == 2


def test_sweep_rejects_a_bad_bound_and_is_not_callable_by_clients(installed: TestDB) -> None:
    with installed.connect() as conn, pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("select profileguard.sweep(0)")
    for role in ("anon", "authenticated", "service_role"):
        for function in (
            "profileguard.sweep(integer, integer)",
            "profileguard.reconcile(integer, integer)",
            "profileguard.note_repair_failure(text, text, text, text, integer,"
            " double precision, double precision, jsonb, text, double precision)",
            "profileguard.repair(uuid[], text, integer, double precision, double precision,"
            " integer, double precision)",
            "profileguard.probe_breakers(text)",
            "profileguard.check_catalog()",
        ):
            assert not installed.scalar(
                "select has_function_privilege(%s, %s, 'execute')", (role, function)
            ), (role, function)


def test_install_schedule_pg_cron_is_refused_where_pg_cron_is_not_loaded(
    installed: TestDB,
) -> None:
    """The servers under test do not preload pg_cron; the schedule runs for real in
    test_cron_tick.py on a private cluster that does."""
    available = installed.scalar(
        "select exists (select from pg_available_extensions where name = 'pg_cron')"
    )
    done = cli(installed, "install", "--schedule", "pg_cron", "--json")
    assert done.returncode == 2, done.stderr
    reason = "installed on this server but not loaded" if available else "not available"
    assert f"pg_cron is {reason}" in done.stderr
    assert "shared_preload_libraries" in done.stderr
    assert "profileguard worker" in done.stderr
    assert installed.scalar("select to_regclass('cron.job')") is None


def test_unknown_scheduler_and_bad_schedule_are_refused(installed: TestDB) -> None:
    other = cli(installed, "install", "--schedule", "systemd")
    assert other.returncode == 2
    assert "--schedule pg_cron" in other.stderr
    bad = cli(installed, "install", "--schedule", "pg_cron", "--cron-schedule", "often")
    assert bad.returncode == 2
    assert "not a cron schedule" in bad.stderr


def test_worker_and_sweep_together_repair_each_user_once(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    installed.bulk_signup(3000)
    from concurrent.futures import ThreadPoolExecutor

    from profileguard.repair import Worker

    def worker() -> int:
        worker = Worker(installed.settings, batch_size=250)
        try:
            return worker.run_once().repaired
        finally:
            worker.close()

    def sweeps() -> int:
        total = 0
        for _ in range(20):
            total += sweep(installed, 200).get("repaired", 0)
        return total

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(worker), pool.submit(sweeps), pool.submit(worker)]
        repaired = sum(f.result() for f in futures)
    remaining = worker()
    assert repaired + remaining == 3000
    assert missing_profiles(installed) == 0
    assert (
        installed.scalar(
            "select count(*) from (select user_id from profileguard.events where kind = 'repair'"
            " group by user_id having count(*) > 1) d"
        )
        == 0
    )

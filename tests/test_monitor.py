"""The figures: stats() and refresh_stats() against the real server, the verdict, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from conftest import TestDB
from monitoring import (
    BAD_NAME,
    add_bad_constraint,
    bulk,
    configure_alerts,
    flush_stats,
    signups,
)

from profileguard import observe
from profileguard.config import AlertSettings
from profileguard.errors import NotInstalledError
from profileguard.install import set_enabled
from profileguard.installation import TRIGGER_NAME


def stats(db: TestDB, window: float = 3600) -> dict[str, Any]:
    with observe.open_connection(db.settings) as conn:
        return observe.read_stats(conn, window_seconds=window)


def refresh(db: TestDB) -> None:
    with observe.open_connection(db.settings) as conn:
        assert observe.refresh(conn) is True


def test_counts_after_a_sweep(installed: TestDB) -> None:
    bulk(installed, 20)
    set_enabled(installed.settings, False)
    signups(installed, 2, name="Off")
    set_enabled(installed.settings, True)
    add_bad_constraint(installed)
    signups(installed, 3, name=BAD_NAME)
    refresh(installed)

    s = stats(installed)
    assert s["users"] == 25 and s["users_exact"] is True
    assert s["missing"] == 5 and s["profiles"] == 20
    assert s["coverage_pct"] == 80.0
    assert s["failures_by_category_total"] == {"constraint": 3}
    assert s["failures_total"] == 3
    assert s["oldest_missing_at"] is not None
    assert s["enabled"] is True and s["trigger_installed"] is True
    assert s["backfill"] is None  # no backfill table in this schema
    assert installed.scalar("select count(*) from profileguard.missing_profiles") == 5


def test_reads_between_sweeps_add_only_what_changed(installed: TestDB) -> None:
    signups(installed, 4)
    refresh(installed)
    assert stats(installed)["users"] == 4

    signups(installed, 3)  # no sweep: counted from the statistics collector
    s = stats(installed)
    assert s["users"] == 7 and s["users_exact"] is False and s["missing"] == 0

    add_bad_constraint(installed)
    bad = signups(installed, 2, name=BAD_NAME)  # failure events name them
    s = stats(installed)
    assert s["users"] == 9 and s["missing"] == 2
    assert s["failures_window"] == {"constraint": 2}

    with installed.connect() as conn:
        conn.execute("alter table public.profiles drop constraint pg_test_monitor_no_bad_user")
        conn.execute("select profileguard.ensure_profile(%s)", (bad[0],))
    s = stats(installed)
    assert s["missing"] == 1 and s["profiles"] == 8
    assert s["repairs_total"] == 1

    refresh(installed)
    after = stats(installed)
    assert after["users"] == 9 and after["users_exact"] is True
    assert after["missing"] == 1 and after["repairs_total"] == 1 and after["failures_total"] == 2


def test_totals_count_an_event_committed_after_a_sweep_once(installed: TestDB) -> None:
    """An event written by a transaction still open during a sweep is counted after it commits,
    exactly once: the sweep's horizon stops at the oldest open transaction."""
    open_tx = installed.connect(autocommit=False)
    try:
        open_tx.execute("select profileguard.record_failure('u-1', '23505', 'dup', 'client')")
        installed.scalar("select profileguard.record_failure('u-2', '42501', 'denied', 'client')")
        refresh(installed)
        assert stats(installed)["failures_by_category_total"] == {"permission": 1}
        open_tx.commit()
    finally:
        open_tx.close()
    for _ in range(3):
        refresh(installed)
        totals = stats(installed)["failures_by_category_total"]
        assert totals == {"permission": 1, "constraint": 1}


def test_success_rate_over_the_window(installed: TestDB) -> None:
    stats(installed)  # the first read takes the sample the window starts from
    add_bad_constraint(installed)
    signups(installed, 6)
    signups(installed, 2, name=BAD_NAME)
    s = stats(installed, window=3600)
    assert s["signups_window"] == 8
    assert s["trigger_failures_window"] == 2
    assert s["success_rate_pct"] == 75.0
    # No audit row per successful signup: only the two failures are in the trail.
    assert installed.scalar("select count(*) from profileguard.events where kind <> 'config'") == 2


def test_quarantine_workers_and_backfill(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, attempts, last_sqlstate,"
            " last_message, quarantined_at) values ('q1', 5, '23514', 'check', now()),"
            " ('q2', 1, '40001', 'retry', null)"
        )
        conn.execute(
            "insert into profileguard.workers (worker_id, hostname, pid, heartbeat_at, stats)"
            " values ('fresh', 'h', 1, now(), '{\"state\": \"running\"}'),"
            " ('old', 'h', 2, now() - interval '1 hour', '{\"state\": \"running\"}'),"
            " ('stopped', 'h', 3, now(), '{\"state\": \"stopped\"}')"
        )
    s = stats(installed)
    assert s["quarantined"] == 1 and s["retrying"] == 1
    assert s["live_workers"] == 1
    assert {w["worker_id"]: w["live"] for w in s["workers"]} == {
        "fresh": True,
        "old": False,
        "stopped": False,
    }
    assert s["backfill"] is None

    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.backfill_runs (state, total_estimate, scanned, updated_at)"
            " values ('running', 200, 50, now() - interval '1 hour')"
        )
    s = stats(installed)
    assert s["backfill"]["state"] == "running"
    assert s["backfill"]["progress_pct"] == 25.0
    assert s["backfill"]["stalled"] is True

    with observe.open_connection(installed.settings) as conn:
        listed = observe.quarantine(conn)
    assert [(q["user_id"], q["category"]) for q in listed] == [("q1", "constraint")]


def test_verdicts(installed: TestDB) -> None:
    settings = configure_alerts(installed, missing_grace_seconds=0)
    result = observe.status(settings)
    assert result["status"] == "healthy" and result["exit_code"] == 0
    assert installed.scalar("select profileguard.health() ->> 'status'") == "healthy"

    # A quarantine entry whose user has a profile (or is gone) is a warning, not a verdict.
    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, quarantined_at) values ('q', now())"
        )
    result = observe.status(settings)
    assert result["status"] == "healthy" and result["exit_code"] == 0
    assert result["warnings"] == ["quarantine"] and result["firing"] == ["quarantine"]
    assert [q["user_id"] for q in result["quarantine"]] == ["q"]
    assert installed.scalar("select profileguard.health() -> 'warnings'") == [
        "1 quarantined users (threshold 0); fix the cause, then run: profileguard retry"
        " --all-quarantined"
    ]

    set_enabled(installed.settings, False)
    result = observe.status(settings)
    assert result["status"] == "unhealthy" and result["exit_code"] == 7
    assert installed.scalar("select profileguard.health() ->> 'status'") == "unhealthy"

    set_enabled(installed.settings, True)
    installed.signup({"full_name": "x"})
    with installed.connect_admin() as conn:  # the table's owner disables it
        conn.execute(f"alter table auth.users disable trigger {TRIGGER_NAME}")
    assert observe.status(settings)["status"] == "unhealthy"


def verdict(db: TestDB, call: str = "profileguard.health()") -> tuple[str, dict[str, str]]:
    """The status and each check's status, as `call` gives them."""
    doc = db.scalar(f"select {call}")
    return doc["status"], {c["name"]: c["status"] for c in doc["checks"]}


def test_missing_grace_and_repair_slo(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    installed.signup({"full_name": "No Profile"})
    set_enabled(installed.settings, True)
    refresh(installed)
    assert stats(installed)["missing"] == 1
    configure_alerts(installed, missing_grace_seconds=3600, repair_slo_seconds=7200)
    status, checks = verdict(installed)
    assert status == "healthy"  # missing, but within the grace
    assert checks["missing_profiles"] == "ok"
    assert installed.scalar("select profileguard.health() -> 'thresholds'") == {
        **AlertSettings().thresholds(),
        "missing_grace_seconds": 3600,
        "repair_slo_seconds": 7200,
    }
    # Arguments replace the installed grace and SLO, for this call only.
    status, checks = verdict(installed, "profileguard.health(interval '0', interval '1 hour')")
    assert status == "degraded" and checks["missing_profiles"] == "warning"
    status, checks = verdict(installed, "profileguard.health(interval '0', interval '0')")
    assert status == "unhealthy" and checks["repair_slo"] == "critical"
    assert verdict(installed)[0] == "healthy"
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        installed.scalar("select profileguard.health(interval '-1 second')")
    # A quarantined user is still a missing user.
    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, attempts, quarantined_at)"
            " select id::text, 5, now() from auth.users"
        )
    settings = configure_alerts(installed, missing_grace_seconds=0, repair_slo_seconds=0)
    assert verdict(installed)[0] == "unhealthy"
    result = observe.status(settings)
    assert result["status"] == "unhealthy" and result["warnings"] == ["quarantine"]


def test_worker_rule_when_required_or_registered(installed: TestDB) -> None:
    assert stats(installed)["workers"] == []
    states = {c["name"]: c["status"] for c in observe.status(installed.settings)["checks"]}
    assert states["no_live_worker"] == "ok"  # never ran a worker, not required
    required = configure_alerts(installed, worker_required=True)
    states = {c["name"]: c["status"] for c in observe.status(required)["checks"]}
    assert states["no_live_worker"] == "warning"
    assert verdict(installed)[1]["no_live_worker"] == "warning"


def test_not_installed(db: TestDB) -> None:
    with pytest.raises(NotInstalledError):
        observe.status(db.settings)


def test_concurrent_sweeps_and_reads(installed: TestDB) -> None:
    bulk(installed, 300)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with observe.open_connection(installed.settings) as conn:
                for _ in range(5):
                    observe.refresh(conn)
                    observe.read_stats(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    refresh(installed)
    assert stats(installed)["users"] == 300


def cli(
    db: TestDB, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "profileguard", "--database-url", db.url, *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_status_command_exit_codes(installed: TestDB, tmp_path: Any) -> None:
    ok = cli(installed, "status", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["status"] == "healthy" and data["stats"]["users"] == 0

    table = cli(installed, "status")
    assert table.returncode == 0
    assert "coverage" in table.stdout and "healthy" in table.stdout

    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, quarantined_at) values ('q', now())"
        )
    warned = cli(installed, "status", "--json")
    assert warned.returncode == 0 and json.loads(warned.stdout)["warnings"] == ["quarantine"]
    set_enabled(installed.settings, False)
    installed.signup({"full_name": "No Profile"})
    set_enabled(installed.settings, True)
    graceless = tmp_path / "graceless.toml"
    graceless.write_text("[alerts]\nmissing_grace_seconds = 0\n")
    upgraded = cli(installed, "upgrade", env={"PROFILEGUARD_CONFIG": str(graceless)})
    assert upgraded.returncode == 0, upgraded.stderr
    # The bounded check runs at most every 2 s: poll.
    deadline = time.monotonic() + 10
    while True:
        degraded = cli(installed, "status", "--json", env={"PROFILEGUARD_CONFIG": str(graceless)})
        if degraded.returncode == 6 or time.monotonic() > deadline:
            break
    assert degraded.returncode == 6, degraded.stdout
    assert json.loads(degraded.stdout)["missing"] == 1
    set_enabled(installed.settings, False)
    bad = cli(installed, "status", "--json")
    assert bad.returncode == 7
    assert json.loads(bad.stdout)["status"] == "unhealthy"

    config = tmp_path / "profileguard.toml"
    config.write_text("[alerts]\nsuccess_rate_min_pct = 250\n")
    wrong = cli(installed, "status", env={"PROFILEGUARD_CONFIG": str(config)})
    assert wrong.returncode == 2 and "alerts.success_rate_min_pct" in wrong.stderr


def test_status_command_not_installed_and_unreachable(db: TestDB) -> None:
    missing = cli(db, "status")
    assert missing.returncode == 3 and "profileguard install" in missing.stderr
    gone = subprocess.run(
        [
            sys.executable,
            "-m",
            "profileguard",
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert gone.returncode == 4


def test_alert_settings_are_validated(tmp_path: Any) -> None:
    from profileguard.config import load_settings
    from profileguard.errors import ConfigError

    config = tmp_path / "profileguard.toml"
    config.write_text(
        "[alerts]\nmissing_grace_seconds = 5\nrepair_slo_seconds = 120\nworker_required = true\n"
        "webhook_url = 'http://127.0.0.1:9/hook'\n"
    )
    alerts = load_settings(config, env={}).alerts
    assert (alerts.missing_grace_seconds, alerts.repair_slo_seconds) == (5.0, 120.0)
    assert alerts.worker_required is True and alerts.webhook_url == "http://127.0.0.1:9/hook"
    env = {"PROFILEGUARD_ALERT_WEBHOOK_URL": "https://hooks.example.com/x"}
    assert load_settings(config, env=env).alerts.webhook_url == "https://hooks.example.com/x"
    for body, key in (
        ("[alerts]\nwebhook_url = 'ftp://x'\n", "webhook_url"),
        ("[alerts]\nmissing_grace_seconds = -1\n", "alerts.missing_grace_seconds"),
        ("[alerts]\nmissing_grace_seconds = 90\n", "alerts.repair_slo_seconds"),
        ("[alerts]\nmissing_for_seconds = 600\n", "alerts.repair_slo_seconds"),
        ("[alerts]\nsuccess_rate_min_pct = 101\n", "alerts.success_rate_min_pct"),
        ("[alerts]\nworker_required = 'maybe'\n", "alerts.worker_required"),
        ("[alerts]\nmissing_treshold = 3\n", "alerts.missing_treshold"),
        ("alerts = 3\n", "[alerts]"),
    ):
        config.write_text(body)
        with pytest.raises(ConfigError) as caught:
            load_settings(config, env={})
        assert key in str(caught.value)


def test_monitoring_functions_are_not_callable_by_clients(installed: TestDB) -> None:
    for role in ("anon", "authenticated"):
        for call in (
            "profileguard.stats()",
            "profileguard.health()",
            "profileguard.refresh_stats()",
        ):
            with installed.connect() as conn:
                conn.execute(f"set role {role}")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"select {call}")
    assert (
        installed.scalar(
            "select bool_and(relrowsecurity) from pg_class where relnamespace ="
            " 'profileguard'::regnamespace and relkind = 'r'"
        )
        is True
    )
    assert (
        installed.scalar(
            "select bool_and(prosecdef and proconfig @> array['search_path=pg_catalog, pg_temp'])"
            " from pg_proc where pronamespace = 'profileguard'::regnamespace"
            " and proname in ('stats', 'health', 'refresh_stats', '_monitored_tables')"
        )
        is True
    )


def test_repair_lag_ignores_quarantined_users(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    first, second = signups(installed, 2, name="Lagging")
    set_enabled(installed.settings, True)
    with installed.connect() as conn:
        conn.execute(
            "update auth.users set created_at = now() - interval '2 hours' where id = %s", (first,)
        )
        conn.execute(
            "update auth.users set created_at = now() - interval '1 hour' where id = %s", (second,)
        )
    refresh(installed)
    s = stats(installed)
    assert 7200 <= s["oldest_missing_age_seconds"] < 7300
    assert 7200 <= s["repair_lag_seconds"] < 7300
    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, attempts, quarantined_at)"
            " values (%s, 5, now())",
            (str(first),),
        )
    s = stats(installed)
    assert 7200 <= s["oldest_missing_age_seconds"] < 7300
    assert 3600 <= s["repair_lag_seconds"] < 3700


def test_duration_reads_in_its_two_largest_units(installed: TestDB) -> None:
    """The status table (Python) and the checks' messages (SQL) write ages alike."""
    from profileguard.cli.render import duration

    ages = (0, 0.4, 45, 59.6, 200, 3600, 3601, 7380, 86400, 90061, 3578455)
    expected = ["0s", "0s", "45s", "1m", "3m 20s", "1h", "1h", "2h 3m", "1d", "1d 1h", "41d 10h"]
    assert [duration(s) for s in ages] == expected
    in_sql = [installed.scalar("select profileguard._duration(%s)", (s,)) for s in ages]
    assert in_sql == expected


def test_status_text_shows_ages_in_human_units(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    (late,) = signups(installed, 1, name="Late")
    set_enabled(installed.settings, True)
    with installed.connect() as conn:
        conn.execute(
            "update auth.users set created_at = now() - interval '2 hours 3 minutes' where id = %s",
            (late,),
        )
    table = cli(installed, "status", "--refresh", env={"COLUMNS": "200"})
    assert table.returncode == 7, table.stderr
    assert "(oldest 2h 3m)" in table.stdout, table.stdout
    assert "7380s" not in table.stdout and "7381s" not in table.stdout
    as_json = json.loads(cli(installed, "status", "--json").stdout)
    assert 7380 <= as_json["stats"]["oldest_missing_age_seconds"] < 7480


def checks_by_name(db: TestDB, grace: str, slo: str) -> dict[str, str]:
    """The checks' messages of SQL health() with this grace and repair SLO."""
    doc = db.scalar("select profileguard.health(%s::interval, %s::interval)", (grace, slo))
    return {c["name"]: c["message"] for c in doc["checks"]}


def test_advice_names_backfill_for_a_backlog_and_worker_for_failures(installed: TestDB) -> None:
    # A backlog: users from while the trigger was off, none of them recorded as a failure.
    set_enabled(installed.settings, False)
    signups(installed, 3, name="Before")
    set_enabled(installed.settings, True)
    with installed.connect() as conn:
        conn.execute("update auth.users set created_at = now() - interval '2 hours'")
    refresh(installed)
    backlog = checks_by_name(installed, "1 second", "1 minute")
    for name in ("missing_profiles", "repair_slo"):
        assert "profileguard backfill" in backlog[name], backlog[name]
        assert "profileguard worker" not in backlog[name]
        assert "profileguard status" not in backlog[name]
    with installed.connect() as conn:
        conn.execute("delete from auth.users")
    refresh(installed)

    # Recent failures of the trigger, recorded: the worker repairs them.
    add_bad_constraint(installed)
    signups(installed, 2, name=BAD_NAME)
    recent = checks_by_name(installed, "0 seconds", "0 seconds")
    for name in ("missing_profiles", "repair_slo"):
        assert "profileguard worker" in recent[name], recent[name]
        assert "profileguard backfill" not in recent[name]
        assert "profileguard status" not in recent[name]


def test_status_counts_inserts_and_says_rolled_back_ones_are_in(installed: TestDB) -> None:
    """The success rate's denominator is the statistics collector's insert count, which includes
    inserts whose transaction rolled back: the text says inserts, not sign-ups."""
    assert cli(installed, "status").returncode == 0  # the window's first sample
    signups(installed, 25)
    with installed.connect(autocommit=False) as conn:
        installed.signup({"full_name": "Rolled Back"}, conn=conn)
        conn.rollback()
        conn.autocommit = True
        flush_stats(conn)
    table = cli(installed, "status")
    assert table.returncode == 0, table.stderr
    text = " ".join(table.stdout.split())
    assert "(0 failures / 26 inserts, rolled-back ones" in text, table.stdout

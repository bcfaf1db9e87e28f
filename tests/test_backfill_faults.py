"""The backfill facing faults against the real server: a fault that fails every user stops the
run (exit 11, the cause named, the checkpoint kept for --resume, nobody quarantined); users'
own data rejected ends it with exit 12 and only them quarantined."""

from __future__ import annotations

import json
import subprocess

from conftest import TestDB, wait_for
from test_backfill import cli, profile_counts, run_cli, run_row, users_without_profiles

from profileguard.errors import ExitCode
from profileguard.install import install, set_enabled, uninstall


def without_profiles(db: TestDB, users: int) -> None:
    """Existing users that never got a profile: bulk inserted with profileguard disabled."""
    set_enabled(db.settings, False)
    db.bulk_signup(users)


def quarantined(db: TestDB) -> int:
    return int(
        db.scalar("select count(*) from profileguard.repair_state where quarantined_at is not null")
    )


def test_not_null_column_without_default_stops_the_run_then_resume_completes(
    installed: TestDB,
) -> None:
    users = 5000
    without_profiles(installed, users)
    with installed.connect() as conn:
        conn.execute("alter table public.profiles add column nickname text not null")
    # A dry run says the same and leaves nothing behind (no charge, no breaker).
    dry = run_cli(installed, "--dry-run", "--json")
    assert dry.returncode == ExitCode.BACKFILL_STOPPED, dry.stderr
    assert "public.profiles.nickname" in dry.stderr
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0
    assert installed.scalar("select count(*) from profileguard.breakers") == 0

    result = run_cli(installed, "--json", "--batch-size", "500")

    assert result.returncode == ExitCode.BACKFILL_STOPPED, result.stderr
    message = " ".join(result.stderr.split())
    assert (
        "every user fails: 23502 not-null violation on column public.profiles.nickname" in message
    )
    assert "drop the column's NOT NULL" in message
    assert "profileguard backfill --resume" in message
    report = json.loads(result.stdout)
    assert report["state"] == "failed" and report["created"] == 0
    stopped = run_row(installed, report["run_id"])
    assert stopped["state"] == "failed" and stopped["detail"]["stopped"] is True
    assert stopped["detail"]["sqlstate"] == "23502"
    # It stopped within its first failing batches (every batch fails: the checkpoint is before
    # the first), and charged nobody: a fault that fails everyone is not the users' data.
    assert (stopped["batches"], stopped["scanned"], stopped["cursor"]) == (0, 0, None)
    assert quarantined(installed) == 0
    assert (
        installed.scalar("select count(*) from profileguard.repair_state where attempts > 0") == 0
    )
    assert (
        installed.scalar("select count(*) from profileguard.events where kind = 'quarantine'") == 0
    )

    with installed.connect() as conn:
        conn.execute("alter table public.profiles alter column nickname drop not null")
    resumed = run_cli(installed, "--resume", "--json")

    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert (final["run_id"], final["state"], final["resumed"]) == (
        report["run_id"],
        "completed",
        True,
    )
    assert (final["created"], final["failed"], final["quarantined"]) == (users, 0, 0)
    assert profile_counts(installed) == {"users": users, "profiles": users, "not_exactly_one": 0}
    assert quarantined(installed) == 0
    # The completed run settled what the fault left: nobody waits on it any more.
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0


def test_uninstall_and_install_during_a_run_stop_it_without_quarantine(
    installed: TestDB,
) -> None:
    users = 20_000
    without_profiles(installed, users)
    proc = subprocess.Popen(
        cli(
            installed,
            "--batch-size",
            "200",
            "--max-batch-size",
            "200",
            "--max-rows-per-second",
            "2000",
            "--json",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert wait_for(
            lambda: bool(
                installed.scalar(
                    "select coalesce(max(batches), 0) >= 2 from profileguard.backfill_runs"
                )
            ),
            timeout=60,
        )
        uninstall(installed.settings)
        install(installed.settings, enabled=False)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == ExitCode.BACKFILL_STOPPED, stderr
    message = " ".join(stderr.split())
    assert "stopped:" in message and "profileguard install" in message
    assert "profileguard backfill --resume" in message
    assert any(state in message for state in ("3F000", "42883", "42P01")), message
    assert quarantined(installed) == 0
    assert (
        installed.scalar("select count(*) from profileguard.events where kind = 'quarantine'") == 0
    )
    assert 0 < installed.scalar("select count(*) from public.profiles") < users

    # The reinstalled schema has no run to resume: a new run creates the rest.
    again = run_cli(installed, "--json")
    assert again.returncode == 0, again.stderr
    assert profile_counts(installed) == {"users": users, "profiles": users, "not_exactly_one": 0}


def test_one_users_own_data_rejected_exits_12_with_only_that_user_quarantined(
    installed: TestDB,
) -> None:
    users = 3000
    without_profiles(installed, users)
    bad = installed.scalar(
        "select id::text from auth.users where raw_user_meta_data->>'full_name' = 'User 1234'"
    )
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint pg_test_no_1234"
            " check (full_name is distinct from 'User 1234') not valid"
        )

    result = run_cli(installed, "--json", "--batch-size", "500")

    assert result.returncode == ExitCode.QUARANTINED, result.stderr
    message = " ".join(result.stderr.split())
    assert "1 users got no profile" in message and "profileguard retry" in message
    report = json.loads(result.stdout)
    assert report["state"] == "completed"
    assert (report["created"], report["failed"], report["quarantined"]) == (users - 1, 1, 1)
    assert [(f["user_id"], f["sqlstate"]) for f in report["failures"]] == [(bad, "23514")]
    assert "pg_test_no_1234" in report["failures"][0]["message"]
    assert users_without_profiles(installed) == {bad}
    with installed.connect() as conn:
        states = conn.execute(
            "select user_id, last_sqlstate, quarantined_at is not null, waiting_on"
            " from profileguard.repair_state"
        ).fetchall()
    assert states == [(bad, "23514", True, None)]


def test_crafted_rows_among_ordinary_users_exit_12_never_11_with_a_breaker_left_open(
    installed: TestDB,
) -> None:
    """A few imported users carry names longer than a CHECK allows, and a breaker is open on
    that CHECK's fingerprint (as an engine that judged by counting users left it): the neutral
    row passes, so the fault is those users' data — every ordinary user gets a profile, they
    alone are charged, exit 12."""
    users = 3000
    without_profiles(installed, users)
    with installed.connect() as conn:
        crafted = [
            str(r[0])
            for r in conn.execute(
                "update auth.users set raw_user_meta_data = jsonb_build_object("
                "'full_name', repeat('x', 200)) where email in"
                " (select 'bulk' || g || '@example.com' from generate_series(500, 3000, 500) g)"
                " returning id"
            ).fetchall()
        ]
        conn.execute(
            "alter table public.profiles add constraint pg_test_name_len"
            " check (char_length(full_name) <= 100) not valid"
        )
        conn.execute(
            "select profileguard.open_breaker(%s::text[],"
            " '23514:public.profiles.pg_test_name_len', '23514',"
            " 'public.profiles.pg_test_name_len', 'new row violates check constraint', 'worker')",
            (crafted[:3],),
        )
    assert len(crafted) == 6

    result = run_cli(installed, "--json", "--batch-size", "500")

    assert result.returncode == ExitCode.QUARANTINED, result.stderr
    report = json.loads(result.stdout)
    assert (report["created"], report["failed"]) == (users - 6, 6), result.stdout
    assert sorted(f["user_id"] for f in report["failures"]) == sorted(crafted)
    assert users_without_profiles(installed) == set(crafted)
    with installed.connect() as conn:
        states = conn.execute(
            "select user_id, last_sqlstate, waiting_on from profileguard.repair_state"
            " order by user_id"
        ).fetchall()
        breakers = conn.execute("select state from profileguard.breakers").fetchall()
    assert states == [(u, "23514", None) for u in sorted(crafted)]
    assert breakers == [("user_specific",)]

"""The backfill against the real server: dry run, bad rows, SIGKILL + resume, concurrent signups,
a single runner, and the run registry."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from conftest import TestDB, wait_for

from profileguard.backfill import BackfillBusyError, Options, Progress, run_backfill
from profileguard.errors import ConfigError, NotInstalledError, ProfileGuardError
from profileguard.install import set_enabled
from profileguard.installation import TRIGGER_NAME

BAD_CONSTRAINT = "pg_test_backfill_reject"


def cli(db: TestDB, *args: str) -> list[str]:
    return [sys.executable, "-m", "profileguard", "--database-url", db.url, "backfill", *args]


def run_cli(db: TestDB, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(db, *args), capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL
    )


def users_without_profiles(db: TestDB) -> set[str]:
    with db.connect() as conn:
        rows = conn.execute(
            "select u.id::text from auth.users u"
            " where not exists (select from public.profiles p where p.id = u.id)"
        ).fetchall()
    return {r[0] for r in rows}


def profile_counts(db: TestDB) -> dict[str, int]:
    """Users, profiles, and users without exactly one profile."""
    with db.connect() as conn:
        row = conn.execute(
            "select (select count(*) from auth.users),"
            " (select count(*) from public.profiles),"
            " (select count(*) from auth.users u"
            "   where (select count(*) from public.profiles p where p.id = u.id) <> 1)"
        ).fetchone()
    assert row is not None
    return {"users": row[0], "profiles": row[1], "not_exactly_one": row[2]}


def run_row(db: TestDB, run_id: int | None = None) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(
            "select to_jsonb(r) from profileguard.backfill_runs r"
            " where %(id)s::bigint is null or r.id = %(id)s order by r.id desc limit 1",
            {"id": run_id},
        ).fetchone()
    assert row is not None
    return dict(row[0])


def backfill_event_total(db: TestDB) -> int:
    return int(
        db.scalar(
            "select coalesce(sum((detail->>'created')::bigint), 0) from profileguard.events"
            " where kind = 'backfill'"
        )
    )


def reject_one_percent(db: TestDB) -> set[str]:
    """A CHECK on profiles rejecting users whose bulk number ends in 00; returns their ids."""
    with db.connect() as conn:
        conn.execute(
            f"alter table public.profiles add constraint {BAD_CONSTRAINT}"
            " check (full_name is null or right(full_name, 2) <> '00') not valid"
        )
        rows = conn.execute(
            "select id::text from auth.users"
            " where right(raw_user_meta_data->>'full_name', 2) = '00'"
        ).fetchall()
    return {r[0] for r in rows}


def without_trigger(db: TestDB, users: int) -> None:
    """Existing users that never got a profile: bulk inserted with profileguard disabled."""
    set_enabled(db.settings, False)
    db.bulk_signup(users)


def test_needs_profileguard_installed(db: TestDB) -> None:
    with pytest.raises(NotInstalledError) as info:
        run_backfill(db.settings)
    assert info.value.hint == "run: profileguard install"


def test_bad_options_are_config_errors(installed: TestDB) -> None:
    with pytest.raises(ConfigError, match="--batch-size"):
        run_backfill(installed.settings, Options(batch_size=10, min_batch_size=100))
    with pytest.raises(ConfigError, match="--target-seconds"):
        Options(target_seconds=0).check()
    result = run_cli(installed, "--max-rows-per-second", "-1")
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--max-rows-per-second': must be a number" in result.stderr


def test_backfill_creates_each_missing_profile_once(installed: TestDB) -> None:
    # Some users already have profiles (trigger on), the rest arrive with the trigger removed.
    installed.bulk_signup(300, prefix="early")
    with installed.connect_admin() as conn:  # the table's owner disables it
        conn.execute(f"alter table auth.users disable trigger {TRIGGER_NAME}")
    installed.bulk_signup(12_000)
    seen: list[Progress] = []

    report = run_backfill(
        installed.settings, Options(batch_size=500, max_batch_size=4000), progress=seen.append
    )

    assert report.state == "completed"
    assert (report.scanned, report.created, report.already_present) == (12_300, 12_000, 300)
    assert (report.failed, report.quarantined) == (0, 0)
    assert profile_counts(installed) == {"users": 12_300, "profiles": 12_300, "not_exactly_one": 0}
    assert (
        installed.scalar(
            "select full_name from public.profiles p join auth.users u using (id)"
            " where u.email = 'bulk7@example.com'"
        )
        == "User 7"
    )
    # Batches adapt within bounds; progress is reported after every batch and only grows.
    assert report.batches == len(seen) > 3
    assert [p.scanned for p in seen] == sorted(p.scanned for p in seen)
    assert all(100 <= p.batch_size <= 4000 for p in seen)
    # Audit: one 'backfill' event per batch that created something, none per user.
    assert backfill_event_total(installed) == 12_000
    assert (
        installed.scalar(
            "select count(*) from profileguard.events"
            " where kind = 'backfill' and user_id is not null"
        )
        == 0
    )
    row = run_row(installed, report.run_id)
    assert row["state"] == "completed" and row["finished_at"] is not None
    assert (row["scanned"], row["created"], row["batches"]) == (12_300, 12_000, report.batches)

    again = run_backfill(installed.settings)
    assert (again.scanned, again.created, again.already_present) == (12_300, 0, 12_300)


def test_dry_run_changes_nothing_and_reports_would_fail_rows(installed: TestDB) -> None:
    without_trigger(installed, 5000)
    bad = reject_one_percent(installed)
    assert len(bad) == 50
    events_before = installed.scalar("select count(*) from profileguard.events")

    result = run_cli(installed, "--dry-run", "--json", "--sample", "3", "--batch-size", "700")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True and report["state"] == "completed"
    assert (report["would_create"], report["would_fail"]) == (4950, 50)
    assert {f["user_id"] for f in report["failures"]} == bad
    assert {f["sqlstate"] for f in report["failures"]} == {"23514"}
    assert all(BAD_CONSTRAINT in f["message"] for f in report["failures"])
    assert len(report["sample"]) == 3
    assert all(p["full_name"].startswith("User ") for p in report["sample"])
    # Nothing changed: no profiles, no events, no repair state.
    assert installed.scalar("select count(*) from public.profiles") == 0
    assert installed.scalar("select count(*) from profileguard.events") == events_before
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0
    assert run_row(installed)["dry_run"] is True


def test_dry_run_text_says_would_create_never_created(installed: TestDB) -> None:
    without_trigger(installed, 300)
    result = run_cli(installed, "--dry-run", "--sample", "0")
    assert result.returncode == 0, result.stderr
    # The progress line (stderr, not a terminal) and the summary table speak of what would be.
    assert "would create 300" in result.stderr and "created" not in result.stderr
    assert re.search(r"would create\W+300\b", result.stdout), result.stdout
    assert "created" not in result.stdout
    assert installed.scalar("select count(*) from public.profiles") == 0


@pytest.mark.parametrize("workers", [1, 3])
def test_rejected_rows_are_quarantined_and_the_rest_created(
    installed: TestDB, workers: int
) -> None:
    without_trigger(installed, 20_000)
    bad = reject_one_percent(installed)
    assert len(bad) == 200

    report = run_backfill(installed.settings, Options(batch_size=1000, workers=workers))

    assert report.state == "completed"
    assert (report.scanned, report.created, report.failed, report.quarantined) == (
        20_000,
        19_800,
        200,
        200,
    )
    assert users_without_profiles(installed) == bad
    with installed.connect() as conn:
        states = conn.execute(
            "select user_id, last_sqlstate, quarantined_at is not null"
            " from profileguard.repair_state"
        ).fetchall()
        events = conn.execute(
            "select user_id, sqlstate, source from profileguard.events where kind = 'quarantine'"
        ).fetchall()
    assert {s[0] for s in states} == bad
    assert all(s[1] == "23514" and s[2] for s in states)
    assert {e[0] for e in events} == bad and len(events) == 200
    assert {(e[1], e[2]) for e in events} == {("23514", "backfill")}
    # Failing batches handed their users to the repair engine: one 'repair' event per user
    # it created, beside the batches' 'backfill' events.
    assert (
        backfill_event_total(installed)
        + installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and source = 'backfill'"
        )
        == 19_800
    )
    row = run_row(installed, report.run_id)
    assert (row["failed"], row["quarantined"], row["created"]) == (200, 200, 19_800)

    # A second run retries them (the constraint still rejects) without a second quarantine.
    again = run_backfill(installed.settings)
    assert (again.created, again.failed, again.quarantined) == (0, 200, 0)
    assert (
        installed.scalar("select count(*) from profileguard.events where kind = 'quarantine'")
        == 200
    )


def test_sigkill_mid_run_then_resume_finishes_without_rescanning(installed: TestDB) -> None:
    users = 30_000
    without_trigger(installed, users)
    proc = subprocess.Popen(
        cli(installed, "--batch-size", "500", "--max-rows-per-second", "4000", "--json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert wait_for(
            lambda: bool(
                installed.scalar(
                    "select coalesce(max(scanned), 0) >= 2000 from profileguard.backfill_runs"
                )
            ),
            timeout=60,
        )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = run_row(installed)
    assert killed["state"] == "running"  # nobody recorded the end: the process died
    assert 2000 <= killed["scanned"] < users
    assert killed["created"] == installed.scalar("select count(*) from public.profiles")

    result = run_cli(installed, "--resume", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["run_id"] == killed["id"] and report["resumed"] is True
    assert report["state"] == "completed"
    # Exactly one pass over the users across both processes, and each profile created once.
    assert (report["scanned"], report["created"], report["failed"]) == (users, users, 0)
    assert profile_counts(installed) == {"users": users, "profiles": users, "not_exactly_one": 0}
    assert backfill_event_total(installed) == users
    row = run_row(installed, killed["id"])
    assert (row["state"], row["resumed"], row["scanned"]) == ("completed", 1, users)


def test_concurrent_signups_during_backfill_all_get_profiles(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    installed.bulk_signup(20_000, handles=True)
    set_enabled(installed.settings, True)
    done = threading.Event()
    errors: list[BaseException] = []
    signed: list[int] = [0]

    def signups(worker: int) -> None:
        try:
            with installed.connect() as conn:
                n = 0
                while not done.is_set() or n < 20:
                    # Half of them have the same handle as a backfilled user ("bulkN").
                    meta = {"full_name": f"New {worker}-{n}"}
                    if n % 2:
                        meta["user_name"] = f"bulk{n * 7 + worker}"
                    installed.signup(meta, conn=conn)
                    n += 1
                signed[0] += n
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=signups, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        report = run_backfill(
            installed.settings,
            Options(batch_size=500, max_batch_size=2000, max_rows_per_second=10_000, workers=2),
        )
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors
    assert report.state == "completed" and report.failed == 0
    counts = profile_counts(installed)
    assert counts["users"] == 20_000 + signed[0]
    assert counts == {"users": counts["users"], "profiles": counts["users"], "not_exactly_one": 0}
    assert (
        installed.scalar(
            "select count(*) from (select username from public.profiles where username is not null"
            " group by username"
            " having count(*) > 1) d"
        )
        == 0
    )
    assert installed.scalar("select count(*) from profileguard.failures") == 0


def test_second_backfill_is_refused_while_one_runs(installed: TestDB) -> None:
    without_trigger(installed, 20_000)
    proc = subprocess.Popen(
        cli(installed, "--batch-size", "200", "--max-rows-per-second", "1000"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert wait_for(
            lambda: bool(
                installed.scalar(
                    "select exists (select from profileguard.backfill_runs"
                    " where state = 'running' and batches > 0)"
                )
            ),
            timeout=60,
        )
        first = run_row(installed)

        second = run_cli(installed, "--json")
        assert second.returncode == 1
        assert "another backfill is running" in second.stderr
        assert f"#{first['id']}" in second.stderr and str(proc.pid) in second.stderr
        assert second.stdout == ""
        with pytest.raises(BackfillBusyError):
            run_backfill(installed.settings, Options(dry_run=True))

        # SIGTERM stops the first one after its current batch, resumable.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "profileguard backfill --resume" in proc.stderr.read()
    stopped = run_row(installed, first["id"])
    assert stopped["state"] == "interrupted" and stopped["scanned"] < 20_000
    # Only the one run was ever registered (the refused ones did nothing).
    assert installed.scalar("select count(*) from profileguard.backfill_runs") == 1


def test_resume_needs_an_unfinished_run(installed: TestDB) -> None:
    with pytest.raises(ProfileGuardError, match="no backfill to resume"):
        run_backfill(installed.settings, Options(resume=True))
    run_backfill(installed.settings)
    with pytest.raises(ProfileGuardError, match="nothing to resume"):
        run_backfill(installed.settings, Options(resume=True))


def test_backfill_objects_are_not_reachable_by_clients(installed: TestDB) -> None:
    for role in ("anon", "authenticated"):
        assert (
            installed.scalar(
                "select has_function_privilege(%s,"
                " 'profileguard.backfill_pages(bigint, bigint, bigint, xid, boolean)', 'execute')",
                (role,),
            )
            is False
        )
        assert (
            installed.scalar(
                "select has_table_privilege(%s, 'profileguard.backfill_runs', 'select')", (role,)
            )
            is False
        )
    assert (
        installed.scalar(
            "select relrowsecurity from pg_class where oid = 'profileguard.backfill_runs'::regclass"
        )
        is True
    )
    assert (
        installed.scalar(
            "select prosecdef and proconfig @> array['search_path=pg_catalog, pg_temp']"
            " from pg_proc where oid ="
            " 'profileguard.backfill_pages(bigint, bigint, bigint, xid, boolean)'::regprocedure"
        )
        is True
    )


def test_lock_timeout_makes_a_batch_give_way_and_retry_smaller(
    installed: TestDB, caplog: pytest.LogCaptureFixture
) -> None:
    without_trigger(installed, 3000)
    caplog.set_level(logging.WARNING, logger="profileguard.backfill")
    holder = installed.connect(autocommit=False)
    # SHARE conflicts with the ROW EXCLUSIVE lock an INSERT needs: the batch must wait.
    holder.execute("lock table public.profiles in share mode")
    timed_out = threading.Event()
    released = threading.Event()

    def release() -> None:
        wait_for(lambda: any("timed out" in r.getMessage() for r in caplog.records), timeout=60)
        timed_out.set()
        holder.rollback()
        released.set()

    thread = threading.Thread(target=release)
    thread.start()
    try:
        report = run_backfill(installed.settings, Options(batch_size=1000, lock_timeout=0.1))
    finally:
        thread.join(timeout=60)
        holder.close()
    assert timed_out.is_set() and released.is_set()
    assert report.state == "completed" and report.created == 3000
    assert profile_counts(installed) == {"users": 3000, "profiles": 3000, "not_exactly_one": 0}
    # The timed-out batch was retried smaller.
    assert any("retrying with 500 rows" in r.getMessage() for r in caplog.records)
    timeouts = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert timeouts and not any("insert into" in m.lower() for m in timeouts)  # one line each


def test_rows_moved_or_inserted_during_a_page_sweep_all_get_one_profile(
    installed: TestDB,
) -> None:
    """Updates move users from pages the sweep has not reached to pages it has done (free
    space left by deleted users); signups land there too. The catch-up must give them all one
    profile."""
    without_trigger(installed, 20_000)
    with installed.connect() as conn:
        # Free space on the first pages only, so moved and new rows land behind the sweep.
        conn.execute(
            "delete from auth.users where ctid < '(60,0)'::tid"
            " and (ctid::text::point)[1]::int % 2 = 0"
        )
        conn.execute("vacuum auth.users")
    set_enabled(installed.settings, True)
    done = threading.Event()
    errors: list[BaseException] = []
    # Users moved from pages far ahead of the sweep's checkpoint (beyond the batches in flight)
    # to pages it had done, without a profile yet.
    behind = [0]
    signed = [0]

    def churn() -> None:
        try:
            with installed.connect() as conn:
                while not done.is_set():
                    row = conn.execute(
                        "select cursor::bigint from profileguard.backfill_runs"
                        " where state = 'running' and phase = 'sweep' and cursor is not null"
                    ).fetchone()
                    if row is None:
                        time.sleep(0.01)
                        continue
                    cursor = int(row[0])
                    # Users at the very end of the table (far ahead of the sweep), made wider
                    # so the new version leaves its full page.
                    moved = conn.execute(
                        "with old as (select id, (ctid::text::point)[0]::bigint as page"
                        "   from auth.users order by ctid desc limit 10),"
                        " upd as (update auth.users u set raw_user_meta_data ="
                        "   u.raw_user_meta_data || jsonb_build_object('bio', repeat('x', 200))"
                        "   from old where u.id = old.id"
                        "   returning u.id, (u.ctid::text::point)[0]::bigint as page)"
                        " select count(*) from upd join old using (id)"
                        " where upd.page < %(cursor)s and old.page > %(cursor)s + 200"
                        "   and not exists (select from public.profiles p where p.id = upd.id)",
                        {"cursor": cursor},
                    ).fetchone()
                    behind[0] += int(moved[0]) if moved else 0
                    installed.signup({"full_name": f"Churn {signed[0]}"}, conn=conn)
                    signed[0] += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        report = run_backfill(
            installed.settings,
            Options(batch_size=500, max_batch_size=1000, max_rows_per_second=5000),
        )
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors
    assert report.state == "completed" and report.failed == 0
    assert behind[0] > 0 and signed[0] > 0
    counts = profile_counts(installed)
    assert counts == {"users": counts["users"], "profiles": counts["users"], "not_exactly_one": 0}
    # The moved users were missed by the sweep (their new versions sit on pages it had done and
    # their old ones were dead when it got there): the catch-up created their profiles.
    assert (
        installed.scalar(
            "select coalesce(sum((detail->>'created')::bigint), 0) from profileguard.events"
            " where kind = 'backfill' and (detail->>'catchup')::boolean"
        )
        >= behind[0]
    )
    assert run_row(installed, report.run_id)["phase"] == "catchup"


def test_resume_of_a_run_in_key_order_asks_for_a_new_run(installed: TestDB) -> None:
    """A run interrupted while development builds walked keys has a key as its cursor: --resume
    refuses it and names the command that starts a new run."""
    without_trigger(installed, 300)
    with installed.connect() as conn:
        run_id = conn.execute(
            "insert into profileguard.backfill_runs (state, cursor, scanned, batches, batch_size)"
            " values ('interrupted', (select id::text from auth.users limit 1), 100, 1, 100)"
            " returning id"
        ).fetchone()[0]
    assert run_row(installed, run_id)["ordering"] == "key"

    result = run_cli(installed, "--resume")

    assert result.returncode == 1, result.stderr
    assert f"#{run_id}" in result.stderr and "key order" in result.stderr
    assert "start a new run" in result.stderr and "profileguard backfill" in result.stderr
    assert installed.scalar("select count(*) from public.profiles") == 0
    report = run_backfill(installed.settings)
    assert report.run_id != run_id and report.state == "completed" and report.created == 300

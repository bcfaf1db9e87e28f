"""Health from the invariant: users the trigger never saw (trigger disabled, replication role
replica, rows written into free space, a rewritten table) are missing in `status` within seconds,
and healthy again within seconds of their repair; trigger failures alone are a warning; status,
/api/status, /metrics and the alerts show one evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from conftest import TestDB
from monitoring import (
    BAD_NAME,
    CONSTRAINT,
    add_bad_constraint,
    bulk,
    configure_alerts,
    flush_stats,
)
from test_web import get_json, scrape, serving

from profileguard import observe
from profileguard.config import Settings
from profileguard.installation import TRIGGER_NAME

# The Must-show bound: missing within 5 s of the insert, healthy within 5 s of the repair.
DEADLINE = 5.0


def insert_users(conn: psycopg.Connection, count: int, prefix: str) -> list[uuid.UUID]:
    """`count` users the way an import writes them (old created_at), one statement each."""
    ids = [uuid.uuid4() for _ in range(count)]
    for n, uid in enumerate(ids):
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " values (%s, 'authenticated', 'authenticated', %s, '{}', now() - interval '2 years')",
            (uid, f"{prefix}{n}@example.com"),
        )
    return ids


def poll(
    settings: Settings, until: Callable[[dict[str, Any]], bool], deadline: float
) -> tuple[dict[str, Any], float]:
    """`observe.status` (what `profileguard status --json` prints) until `until` holds or the
    deadline passes; the last document and the seconds it took."""
    started = time.monotonic()
    while True:
        result = observe.status(settings)
        if until(result) or time.monotonic() - started > deadline:
            return result, time.monotonic() - started
        time.sleep(0.1)


def repair(db: TestDB, ids: list[uuid.UUID]) -> None:
    with db.connect() as conn:
        for uid in ids:
            conn.execute("select * from profileguard.ensure_profile(%s, 'test')", (uid,))


def cli_status(db: TestDB, config: Path | None = None) -> tuple[int, dict[str, Any]]:
    """`profileguard status --json`: its exit code and document."""
    env = {**os.environ, **({"PROFILEGUARD_CONFIG": str(config)} if config else {})}
    done = subprocess.run(
        [sys.executable, "-m", "profileguard", "--database-url", db.url, "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    return done.returncode, json.loads(done.stdout)


@contextmanager
def replica_session(db: TestDB) -> Iterator[psycopg.Connection]:
    """A superuser session whose writes fire no ordinary trigger, kept open (its statistics
    stay unpublished while it idles)."""
    with db.connect_admin() as conn:
        conn.execute("set session_replication_role = replica")
        yield conn


def test_users_the_trigger_never_saw_are_missing_within_seconds(installed: TestDB) -> None:
    db = installed
    settings = db.settings
    bulk(db, 50, prefix="before")
    first = observe.status(settings)
    assert first["status"] == "healthy" and first["missing"] == 0

    with db.connect_admin() as admin:  # the table's owner disables the trigger
        admin.execute(f"alter table auth.users disable trigger {TRIGGER_NAME}")
        disabled = insert_users(admin, 10, "disabled")
        admin.execute(f"alter table auth.users enable trigger {TRIGGER_NAME}")
        inserted = time.monotonic()
        seen, took = poll(settings, lambda r: r["missing"] == 10, DEADLINE)
        assert seen["missing"] == 10, seen["stats"]
        assert took < DEADLINE and time.monotonic() - inserted < DEADLINE + 1

        with replica_session(db) as replica:
            replicated = insert_users(replica, 10, "replica")
            inserted = time.monotonic()
            seen, took = poll(settings, lambda r: r["missing"] == 20, DEADLINE)
            assert seen["missing"] == 20, seen["stats"]
            assert took < DEADLINE and time.monotonic() - inserted < DEADLINE + 1
            # Missing since they were inserted, not since their created_at of two years ago.
            assert seen["status"] == "healthy"  # within the grace of 10 s
            assert seen["oldest_missing_age_seconds"] < 30

            found = db.scalar(
                "select array_agg(user_id order by found_seq) from profileguard.found_missing()"
            )
            assert sorted(found) == sorted(str(u) for u in disabled + replicated)
            code, shown = cli_status(db)
            assert (code, shown["missing"], shown["stats"]["missing"]) == (0, 20, 20)

            repair(db, disabled + replicated)
            repaired = time.monotonic()
            seen, took = poll(
                settings, lambda r: r["missing"] == 0 and r["status"] == "healthy", DEADLINE
            )
            assert (seen["status"], seen["missing"]) == ("healthy", 0), seen["stats"]
            assert took < DEADLINE and time.monotonic() - repaired < DEADLINE + 1
    assert db.scalar("select count(*) from profileguard.found_missing()") == 0
    code, shown = cli_status(db)
    assert (code, shown["status"], shown["missing"]) == (0, "healthy", 0)


def test_found_missing_follows_a_cursor(installed: TestDB) -> None:
    """What the worker reads: a notice on its channel, then the users after a cursor."""
    db = installed
    observe.status(db.settings)
    with db.connect() as listener:
        listener.execute("listen profileguard")
        with replica_session(db) as replica:
            ids = insert_users(replica, 3, "cursor")
        poll(db.settings, lambda r: r["missing"] == 3, DEADLINE)
        notices = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
    assert notices and notices[0]["source"] == "invariant" and notices[0]["found"] == 3
    with db.connect() as conn:
        rows = conn.execute(
            "select found_seq, user_id from profileguard.found_missing(0, 2)"
        ).fetchall()
        assert len(rows) == 2
        rest = conn.execute(
            "select user_id from profileguard.found_missing(%s)", (rows[-1][0],)
        ).fetchall()
    assert sorted([r[1] for r in rows] + [r[0] for r in rest]) == sorted(map(str, ids))
    repair(db, ids[:1])
    left = db.scalar("select array_agg(user_id) from profileguard.found_missing()")
    assert sorted(left) == sorted(map(str, ids[1:]))


def test_a_user_committed_after_checks_began_is_still_found(installed: TestDB) -> None:
    """An import transaction open across several checks: its rows are older than the checks'
    snapshots, and the next check after its commit still reads them."""
    db = installed
    observe.status(db.settings)
    with db.connect_admin(autocommit=False) as importer:
        importer.execute("set local session_replication_role = replica")
        ids = insert_users(importer, 4, "late")
        bulk(db, 30, prefix="meanwhile")  # the table grows past the import's page meanwhile
        for _ in range(3):
            assert observe.status(db.settings)["missing"] == 0
            time.sleep(1.1)
        importer.commit()
    seen, _ = poll(db.settings, lambda r: r["missing"] == 4, DEADLINE)
    assert seen["missing"] == 4, seen["stats"]
    repair(db, ids)


def test_rows_in_free_space_and_a_rewritten_table(installed: TestDB) -> None:
    """Inserts into pages freed by a vacuum are found once the collector counts them (a wide
    pass); after VACUUM FULL (a new relfilenode) a full pass runs."""
    db = installed
    bulk(db, 400, prefix="churn")
    with db.connect_admin() as admin:
        admin.execute(
            "delete from auth.users where email like 'churn%%' and email not like 'churn1%%'"
        )
        admin.execute("vacuum auth.users")
    observe.status(db.settings)
    time.sleep(2.1)
    observe.status(db.settings)  # the tail now starts past the freed pages
    with replica_session(db) as replica:
        ids = insert_users(replica, 5, "freespace")
        flush_stats(replica)
        row = replica.execute(
            "select array_agg(distinct (ctid::text::point)[0]) from auth.users"
            " where email like 'freespace%%'"
        ).fetchone()
        pages = [int(p) for p in row[0]] if row else []
    size = db.scalar("select pg_relation_size('auth.users') / current_setting('block_size')::int")
    tail = db.scalar("select tail_block from profileguard.invariant_scan")
    assert pages and max(pages) < tail < size  # written into pages before the tail
    state = db.scalar("select row_to_json(s) from profileguard.invariant_scan s")
    seen, _ = poll(db.settings, lambda r: r["missing"] == 5, DEADLINE)
    assert seen["missing"] == 5, json.dumps(
        [
            state,
            db.scalar("select row_to_json(s) from profileguard.invariant_scan s"),
            db.scalar("select pg_stat_get_tuples_inserted('auth.users'::regclass)"),
        ]
    )
    assert db.scalar("select last_mode from profileguard.invariant_scan") == "wide"
    repair(db, ids)

    with db.connect_admin() as admin:
        admin.execute("vacuum full auth.users")
        admin.execute(f"alter table auth.users disable trigger {TRIGGER_NAME}")
        more = insert_users(admin, 2, "rewritten")
        admin.execute(f"alter table auth.users enable trigger {TRIGGER_NAME}")
    seen, _ = poll(db.settings, lambda r: r["missing"] == 2, DEADLINE)
    assert seen["missing"] == 2, seen["stats"]
    assert db.scalar(
        "select s.relfilenode = c.relfilenode from profileguard.invariant_scan s,"
        " pg_class c where c.oid = 'auth.users'::regclass"
    )
    repair(db, more)


def test_trigger_failures_alone_are_a_warning(installed: TestDB) -> None:
    """The old bug: unhealthy for the whole success-rate window (an hour) after every user was
    repaired. Now the failure rate is a warning, and the verdict follows the missing users."""
    db = installed
    settings = configure_alerts(db, success_rate_min_signups=1, success_rate_min_pct=99)
    observe.status(settings)  # the window's first sample
    add_bad_constraint(db)
    bad = [db.signup({"full_name": BAD_NAME}) for _ in range(4)]
    with db.connect() as conn:
        flush_stats(conn)
    failing = observe.status(settings)
    assert failing["missing"] == 4 and "success_rate" in failing["warnings"]
    assert failing["status"] == "healthy"  # within the grace; the rate alone changes nothing

    with db.connect() as conn:
        conn.execute(f"alter table public.profiles drop constraint {CONSTRAINT}")
    repair(db, bad)
    after = observe.status(settings)
    assert after["missing"] == 0
    assert after["stats"]["trigger_failures_window"] == 4  # still in the hour's window
    assert (after["status"], after["exit_code"]) == ("healthy", 0)
    assert after["warnings"] == ["success_rate"]
    assert {c["name"]: c["status"] for c in after["checks"]}["success_rate"] == "warning"
    assert db.scalar("select profileguard.health() ->> 'status'") == "healthy"
    evaluation = observe.AlertManager(settings, sinks=[]).evaluate()
    assert evaluation.status == "healthy" and evaluation.active == ["success_rate"]


def agreement(
    db: TestDB, settings: Settings, base: str, config: Path
) -> dict[str, tuple[str, int]]:
    """The verdict and missing count as each view shows it."""
    level = {0: "healthy", 1: "degraded", 2: "unhealthy"}
    library = observe.status(settings)
    api = get_json(f"{base}/api/status")
    metrics = scrape(base)
    alerts = observe.AlertManager(settings, sinks=[]).evaluate()
    code, cli = cli_status(db, config)
    assert code == library["exit_code"]
    return {
        "library": (library["status"], library["missing"]),
        "api": (api["status"], api["missing"]),
        "api stats": (api["status"], api["stats"]["missing"]),
        "metrics": (
            level[int(metrics["profileguard_health_status"][()])],
            int(metrics["profileguard_missing_profiles"][()]),
        ),
        "alerts": (alerts.status, int(alerts.stats["missing"])),
        "cli": (cli["status"], cli["missing"]),
    }


def test_every_view_shows_one_evaluation(installed: TestDB, tmp_path: Any) -> None:
    db = installed
    config = tmp_path / "profileguard.toml"
    config.write_text("[alerts]\nmissing_grace_seconds = 0\n")
    settings = configure_alerts(db, missing_grace_seconds=0)
    with serving(settings) as base:
        healthy = agreement(db, settings, base, config)
        assert set(healthy.values()) == {("healthy", 0)}, healthy

        with replica_session(db) as replica:
            ids = insert_users(replica, 7, "agree")
        poll(settings, lambda r: r["missing"] == 7, DEADLINE)
        views = agreement(db, settings, base, config)
        assert set(views.values()) == {("degraded", 7)}, views
        metrics = scrape(base)
        assert (
            metrics["profileguard_check_failing"][
                (("check", "missing_profiles"), ("severity", "warning"))
            ]
            == 1
        )
        assert (
            metrics["profileguard_check_failing"][
                (("check", "repair_slo"), ("severity", "critical"))
            ]
            == 0
        )

        repair(db, ids)
        poll(settings, lambda r: r["missing"] == 0, DEADLINE)
        again = agreement(db, settings, base, config)
        assert set(again.values()) == {("healthy", 0)}, again


def test_a_full_sweep_keeps_when_a_user_went_missing(installed: TestDB) -> None:
    """Imported users carry old created_at values: the sweep must not date their absence back
    to them (which would make the verdict unhealthy at once)."""
    db = installed
    observe.status(db.settings)
    with replica_session(db) as replica:
        ids = insert_users(replica, 3, "swept")
    seen, _ = poll(db.settings, lambda r: r["missing"] == 3, DEADLINE)
    before = seen["oldest_missing_age_seconds"]
    swept = observe.status(db.settings, refresh_if_older_than=0)
    assert swept["missing"] == 3 and swept["status"] == "healthy"
    assert before <= swept["oldest_missing_age_seconds"] < before + 30
    repair(db, ids)


def test_a_long_transaction_elsewhere_does_not_pin_the_tail(installed: TestDB) -> None:
    """A transaction open for long that never touched the users table holds the snapshot's xmin
    back, but the tail still moves on: checks keep reading only what was appended lately."""
    db = installed
    bulk(db, 2000, prefix="base")
    with db.connect_admin(autocommit=False) as long_one:
        long_one.execute("create temporary table pg_temp.hold (x int)")
        long_one.execute("insert into pg_temp.hold values (1)")  # it has an xid now
        for n in range(3):
            bulk(db, 200, prefix=f"more{n}_")
            observe.status(db.settings)
            time.sleep(2.1)
        observe.status(db.settings)
        size = db.scalar(
            "select pg_relation_size('auth.users') / current_setting('block_size')::int"
        )
        tail = db.scalar("select tail_block from profileguard.invariant_scan")
        assert tail > 0 and size - tail <= 8, (tail, size)
        with replica_session(db) as replica:
            ids = insert_users(replica, 3, "pinned")
        seen, _ = poll(db.settings, lambda r: r["missing"] == 3, DEADLINE)
        assert seen["missing"] == 3, seen["stats"]
        long_one.rollback()
    repair(db, ids)

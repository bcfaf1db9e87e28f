"""Health and metrics latency at scale: profileguard's cheap reads vs counting on every scrape.

What it measures, in one run on one server, with ``--users`` users (default 1,000,000) in
``auth.users`` and their profiles (created by profileguard's trigger), plus a few hundred users
without a profile (trigger off, and trigger failures), quarantined users and a worker:

* ``health()``      — ``select profileguard.health()`` on a kept connection (what a probe does);
* ``stats()``       — ``select profileguard.stats('1 hour')`` on a kept connection;
* ``metrics``       — one whole ``/metrics`` exposition (``profileguard.web.metrics.render``:
  stats(), the alert states, the text format) on a kept connection, as ``serve`` does with its
  pool; ``metrics+conn`` opens a new connection for each scrape instead;
* ``naive count``   — what a health check without profileguard's counters does: count users and
  the users without a profile (a scan of both tables) on every read;
* ``refresh_stats()`` — the periodic full sweep that keeps the cheap reads exact;
* the bounded check of the invariant (``check_invariant()``, run by stats() every ~2 s), pass by
  pass: the tail pass with nothing new, after 10 and after 1,000 signups (what it costs every
  2 s), the wide pass (when the statistics collector counted inserts the tail did not see) and
  the full pass (first check, or the table rewritten); and how long until stats() counts 10
  users inserted with ``session_replication_role = replica`` as missing.

``--invariant-only`` measures just the check (for the larger sizes). The server's version and
``jit`` setting are printed with the figures.

Reads are interleaved over ``--rounds`` rounds, first right after a sweep and then again after
``--signups-since`` more signups without a sweep (the incremental path). It prints median and
p95 milliseconds per read and the ratio to the naive count, checks that the figures agree with
an exact count, and says whether a health read stays under the 50 ms target. It is a
measurement, not a test: it exits 0 whatever the figures are.

Run::

    .venv/bin/python bench/health.py                          # embedded PostgreSQL, 1M users
    .venv/bin/python bench/health.py --users 200000 --rounds 3
    .venv/bin/python bench/health.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/health.py --users 3000000 --invariant-only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdb import database, log

from profileguard.config import load_settings
from profileguard.install import install, set_enabled
from profileguard.web import metrics

TARGET_MS = 50.0
CHUNK = 100_000
BULK = (
    "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
    " select gen_random_uuid(), 'authenticated', 'authenticated',"
    " %(prefix)s || g || '@bench.example',"
    " jsonb_build_object('full_name', 'Bench User ' || g, 'user_name', %(prefix)s || g),"
    " now() - make_interval(secs => g)"
    " from generate_series(1, %(n)s) g"
)
NAIVE = (
    "select (select count(*) from auth.users) as users,"
    " (select count(*) from auth.users u"
    "  where not exists (select from public.profiles p where p.id = u.id)) as missing"
)

SCRATCH_DB = "profileguard_bench_health"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return (time.perf_counter() - started) * 1000, value


def populate(conn: psycopg.Connection, users: int, settings: Any) -> None:
    done = 0
    started = time.perf_counter()
    while done < users:
        n = min(CHUNK, users - done)
        conn.execute(BULK, {"prefix": f"u{done}_", "n": n})
        done += n
        log(f"  {done:,} users ({time.perf_counter() - started:.0f} s)")
    # Users without a profile: the trigger switched off for a moment, and trigger failures.
    set_enabled(settings, False)
    conn.execute(BULK, {"prefix": "off_", "n": 300})
    set_enabled(settings, True)
    conn.execute(
        "alter table public.profiles add constraint bench_no_bad"
        " check (full_name is distinct from 'Bench Bad') not valid"
    )
    for i in range(200):
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " values (gen_random_uuid(), 'authenticated', 'authenticated', %s,"
            ' \'{"full_name": "Bench Bad"}\', now())',
            (f"bad{i}@bench.example",),
        )
    conn.execute(
        "insert into profileguard.repair_state (user_id, attempts, last_sqlstate, quarantined_at)"
        " select 'q' || g, 5, '23514', now() from generate_series(1, 25) g"
    )
    conn.execute(
        "insert into profileguard.workers (worker_id, hostname, pid, stats)"
        " values ('bench', 'bench', 1, '{\"state\": \"running\"}')"
    )
    # Publish this connection's pending statistics before the first sweep reads them.
    conn.execute("select pg_stat_force_next_flush()")
    conn.execute("select 1")
    log("  vacuum analyze…")
    conn.execute("vacuum analyze auth.users")
    conn.execute("vacuum analyze public.profiles")
    conn.execute("vacuum analyze profileguard.events")


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(p95, 3),
        "reads": len(ordered),
    }


def measure(url: str, settings: Any, args: argparse.Namespace) -> dict[str, Any]:
    conn = psycopg.connect(url, autocommit=True)
    scraper = psycopg.connect(url, autocommit=True)
    reads: dict[str, Callable[[], Any]] = {
        "health()": lambda: conn.execute("select profileguard.health()").fetchone(),
        "stats()": lambda: conn.execute("select profileguard.stats('1 hour')").fetchone(),
        # As `profileguard serve` scrapes: a pooled (kept) connection.
        "metrics": lambda: metrics.render(settings, lambda: contextlib.nullcontext(scraper)),
        # A new connection per scrape (stats() compiled again in each new session).
        "metrics+conn": lambda: metrics.render(settings),
        "naive count": lambda: conn.execute(NAIVE).fetchone(),
    }
    repeat = {name: args.reads for name in reads}
    repeat["naive count"] = max(1, args.reads // 10)
    times: dict[str, list[float]] = {name: [] for name in reads}
    order = list(reads)
    for round_ in range(args.rounds):
        for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
            for _ in range(repeat[name]):
                ms, _ = timed(reads[name])
                times[name].append(ms)
    conn.close()
    scraper.close()
    return {name: summarize(values) for name, values in times.items()}


CHECK = "select profileguard.check_invariant('0 seconds')"


def check_costs(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Each pass of the bounded check, forced (interval 0), on a kept connection."""
    costs: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:

        def check() -> dict[str, Any]:
            row = conn.execute(CHECK).fetchone()
            assert row is not None and row[0] is not None, "the check did not run"
            return dict(row[0])

        check()
        check()  # the tail now starts at the end of the table
        costs["tail, nothing new"] = passes(check, args.reads)
        for signups in (10, 1000):

            def insert(n: int = signups) -> None:
                conn.execute(BULK, {"prefix": f"inv{n}_{time.monotonic_ns()}_", "n": n})
                conn.execute("select pg_stat_force_next_flush()")
                conn.execute("select 1")

            costs[f"tail, {signups:,} signups"] = passes(check, max(3, args.reads // 4), insert)
        # The collector counted inserts the tail passes did not see: a wide pass.
        costs["wide pass"] = passes(
            check,
            3,
            lambda: conn.execute(
                "update profileguard.invariant_scan set inserted_base = inserted_base - 1000000000"
            ),
        )
        # A rewritten table (new relfilenode): a full pass.
        costs["full pass"] = passes(
            check, 3, lambda: conn.execute("update profileguard.invariant_scan set relfilenode = 0")
        )
        check()
        costs["detection_seconds"] = detection(url, conn)
    return costs


def passes(
    run: Callable[[], dict[str, Any]], times: int, before: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Wall time of `times` checks (each after `before`, untimed), and what the check says it did
    (mode, rows and pages read)."""
    samples, modes, scanned, pages = [], set(), [], []
    for _ in range(times):
        if before is not None:
            before()
        ms, result = timed(run)
        samples.append(ms)
        modes.add(result["mode"])
        scanned.append(int(result["scanned"]))
        pages.append(int(result.get("tail_pages") or 0))
    return {
        **summarize(samples),
        "modes": sorted(modes),
        "rows_read": max(scanned),
        "tail_pages": max(pages),
    }


def detection(url: str, conn: psycopg.Connection) -> float:
    """Seconds from 10 users committed with replication role replica (no trigger fires) until
    stats() counts them missing, polling stats() as `status` and /metrics do."""
    before = int(conn.execute("select profileguard.stats() ->> 'missing'").fetchone()[0])  # type: ignore[index]
    with psycopg.connect(url, autocommit=True) as importer:
        importer.execute("set session_replication_role = replica")
        importer.execute(BULK, {"prefix": "replica_", "n": 10})
        started = time.monotonic()
        while time.monotonic() - started < 60:
            row = conn.execute("select profileguard.stats() ->> 'missing'").fetchone()
            if row and int(row[0]) >= before + 10:
                break
            time.sleep(0.05)
        seconds = time.monotonic() - started
        importer.execute("set session_replication_role = origin")
    return round(seconds, 3)


def agree(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        stats = conn.execute("select profileguard.stats('1 hour')").fetchone()
        exact = conn.execute(NAIVE).fetchone()
    assert stats is not None and exact is not None
    figures = stats[0]
    return {
        "stats_users": figures["users"],
        "exact_users": exact[0],
        "stats_missing": figures["missing"],
        "exact_missing": exact[1],
        "agree": figures["users"] == exact[0] and figures["missing"] == exact[1],
    }


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from profileguard import sql as sqlfiles

    settings = load_settings(env={}, database_url=url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
        install(settings, create_profile_table=True)
        log(f"creating {args.users:,} users (profiles by the trigger)…")
        populate(conn, args.users, settings)
        server = conn.execute(
            "select current_setting('server_version'), current_setting('jit'), pg_jit_available()"
        ).fetchone()
        size = conn.execute("select pg_size_pretty(pg_table_size('auth.users'))").fetchone()
        sweeps = []
        for _ in range(3):
            ms, _ = timed(lambda: conn.execute("select profileguard.refresh_stats()"))
            sweeps.append(ms)
    report: dict[str, Any] = {
        "users": args.users,
        "server_version": server[0] if server else "?",
        "jit": f"{server[1]} (available: {'yes' if server[2] else 'no'})" if server else "?",
        "identity_table_size": size[0] if size else "?",
        "refresh_stats_ms": summarize(sweeps),
    }
    log("measuring the bounded check of the invariant…")
    report["invariant_check"] = check_costs(url, args)
    if args.invariant_only:
        return report
    log("measuring right after a sweep…")
    report["after_sweep"] = measure(url, settings, args)
    report["after_sweep_agreement"] = agree(url)
    log(f"{args.signups_since:,} more signups (some failing) without a sweep…")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BULK, {"prefix": "late_", "n": args.signups_since})
        for i in range(50):
            conn.execute(
                "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
                " values (gen_random_uuid(), 'authenticated', 'authenticated', %s,"
                ' \'{"full_name": "Bench Bad"}\', now())',
                (f"late_bad{i}@bench.example",),
            )
        conn.execute("select pg_stat_force_next_flush()")
        conn.execute("select 1")
    report["between_sweeps"] = measure(url, settings, args)
    report["between_sweeps_agreement"] = agree(url)
    return report


def print_check(costs: dict[str, Any]) -> None:
    print("\nbounded check of the invariant (check_invariant(), forced):")
    print(
        f"  {'pass':<22}{'median ms':>11}{'p95 ms':>10}{'runs':>6}{'rows read':>11}"
        f"{'tail pages':>11}  {'share of a core every 2 s':>26}"
    )
    for name, row in costs.items():
        if not isinstance(row, dict):
            continue
        share = row["median_ms"] / 2000 * 100
        print(
            f"  {name:<22}{row['median_ms']:>11.2f}{row['p95_ms']:>10.2f}{row['reads']:>6}"
            f"{row['rows_read']:>11,}{row['tail_pages']:>11,}  {share:>25.2f}%"
            f"  ({'/'.join(row['modes'])})"
        )
    print(
        f"  10 users inserted with session_replication_role = replica: counted missing by "
        f"stats() after {costs['detection_seconds']:.2f} s"
    )


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nprofileguard health/metrics at {report['users']:,} users "
        f"(PostgreSQL {report['server_version']}, jit {report['jit']}; auth.users "
        f"{report['identity_table_size']})"
    )
    sweep = report["refresh_stats_ms"]
    print(
        f"full sweep refresh_stats(): median {sweep['median_ms']:.0f} ms "
        f"(run every alerts.refresh_interval_seconds, not per read)"
    )
    print_check(report["invariant_check"])
    if "after_sweep" not in report:
        return
    for phase in ("after_sweep", "between_sweeps"):
        rows = report[phase]
        naive = rows["naive count"]["median_ms"]
        print(f"\n{phase.replace('_', ' ')}:")
        print(f"  {'read':<14}{'median ms':>11}{'p95 ms':>10}{'reads':>7}{'naive ÷ this':>15}")
        for name, row in rows.items():
            ratio = naive / row["median_ms"] if row["median_ms"] else float("inf")
            print(
                f"  {name:<14}{row['median_ms']:>11.2f}{row['p95_ms']:>10.2f}"
                f"{row['reads']:>7}{ratio:>14.1f}x"
            )
        agreement = report[f"{phase}_agreement"]
        print(
            f"  figures: users {agreement['stats_users']:,} (exact {agreement['exact_users']:,}),"
            f" missing {agreement['stats_missing']:,} (exact {agreement['exact_missing']:,})"
            f" → {'agree' if agreement['agree'] else 'DIFFER'}"
        )
    worst = max(report[p]["health()"]["p95_ms"] for p in ("after_sweep", "between_sweeps"))
    verdict = "meets" if worst < TARGET_MS else "MISSES"
    print(f"\nhealth() p95 {worst:.2f} ms: {verdict} the {TARGET_MS:.0f} ms target")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="server to use (a scratch database is created and dropped); "
        "default: $DATABASE_URL, else an embedded PostgreSQL",
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=20, help="reads per kind per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--signups-since",
        type=int,
        default=10_000,
        help="signups between the sweep and the second measurement",
    )
    parser.add_argument(
        "--invariant-only",
        action="store_true",
        help="measure only the bounded check of the invariant",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.users < 1 or args.reads < 1 or args.rounds < 1 or args.signups_since < 0:
        parser.error("--users, --reads and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    with database(args.database_url, SCRATCH_DB) as (url, where):
        report = run(url, args)
    report["where"] = where
    report["elapsed_seconds"] = round(time.perf_counter() - began, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        print(f"(total {report['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

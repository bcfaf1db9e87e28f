"""Backfill benchmark: profileguard backfill vs one raw INSERT … SELECT vs per-user ensure calls.

In one run, on one server and the same data (``--users`` users in ``auth.users``, default
1,000,000, none with a profile), it measures, each time starting from an empty
``public.profiles``:

* ``raw``: one ``INSERT … SELECT … WHERE NOT EXISTS … ON CONFLICT DO NOTHING`` over the whole
  table, built from the same installed mapping (same rows, same usernames) — the practical limit;
* ``profileguard``: ``python -m profileguard backfill --json`` as a child process (adaptive
  batches, timeouts, checkpoints, audit events), timed from spawn to exit, once per ``--workers``
  value (default: 1 and 2, the command's default); its peak RSS comes from
  ``wait4``;
* ``naive``: the usual script — fetch 100 ids without a profile, call ``ensure`` once per user
  (the profileguard client), repeat. It is time-boxed (``--naive-seconds``) on a sample and its
  rows/s is extrapolated to all users (the output says so).

``--rounds`` repeats raw and profileguard alternately and reports the median. After each full run
it checks that every user has exactly one profile. It is a measurement, not a test: it exits 0
whatever the figures are, and prints whether the targets are met (profileguard ≥ 0.9x raw,
≥ 20x naive, peak RSS < 150 MB).

Run::

    .venv/bin/python bench/backfill.py                     # embedded PostgreSQL, 1M users
    .venv/bin/python bench/backfill.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/backfill.py --users 200000 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdb import database, log

from profileguard import sql as sqlfiles
from profileguard.client import ProfileGuard
from profileguard.config import load_settings
from profileguard.install import install
from profileguard.mapping import build_plan, insert_statement

SCRATCH_DB = "profileguard_bench_backfill"
TIMES = "\N{MULTIPLICATION SIGN}"
RAW_TARGET = 0.9  # profileguard rows/s ÷ raw rows/s, at least
NAIVE_TARGET = 20.0  # profileguard rows/s ÷ naive rows/s, at least
RSS_TARGET_MB = 150.0
CHUNK = 100_000
NAIVE_FETCH = 100

USERS = (
    "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
    " select gen_random_uuid(), 'authenticated', 'authenticated',"
    " 'user_' || g || '@bench.example',"
    " jsonb_build_object('full_name', 'User ' || g,"
    " 'avatar_url', 'https://example.com/avatars/' || g || '.png', 'user_name', 'user_' || g),"
    " now() - make_interval(secs => g)"
    " from generate_series(%(low)s, %(high)s) g"
)
CHECK = (
    "select (select count(*) from auth.users),"
    " (select count(*) from public.profiles),"
    " (select count(*) from auth.users u"
    "   where not exists (select from public.profiles p where p.id = u.id))"
)
MISSING_IDS = (
    "select u.id from auth.users u"
    " where not exists (select from public.profiles p where p.id = u.id) limit %s"
)


class Bench:
    """The three approaches on one database holding `users` users without profiles."""

    def __init__(self, url: str, args: argparse.Namespace):
        self.url = url
        self.args = args
        self.settings = load_settings(env={}, database_url=url)
        self.warnings: list[str] = []

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def setup(self) -> None:
        with self.connect() as conn:
            conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
        install(self.settings, create_profile_table=True, enabled=False)
        log(f"creating {self.args.users:,} users without profiles…")
        with self.connect() as conn:
            for low in range(1, self.args.users + 1, CHUNK):
                high = min(self.args.users, low + CHUNK - 1)
                conn.execute(USERS, {"low": low, "high": high})
            conn.execute("vacuum analyze auth.users")
            plan = build_plan(conn, self.settings)
            self.raw_statement = insert_statement(
                plan,
                source=sql.SQL("auth.users"),
                where=sql.SQL("where not exists (select from public.profiles p where p.id = u.id)"),
            ).as_string(conn)

    def reset(self) -> None:
        """Empty profiles (and the audit/run tables), then a checkpoint so runs start equal.

        TRUNCATE leaves the profile table without statistics (as after a fresh install); an
        ANALYZE of the empty table would make the raw statement's username check a sequential
        scan per row (quadratic), which is not the practical limit this is meant to show.
        """
        with self.connect() as conn:
            conn.execute("truncate public.profiles")
            conn.execute(
                "truncate profileguard.events, profileguard.backfill_runs,"
                " profileguard.repair_state"
            )
            conn.execute("checkpoint")

    def verify(self, what: str) -> None:
        with self.connect() as conn:
            row = conn.execute(CHECK).fetchone()
        assert row is not None
        users, profiles, missing = row
        if profiles != users or missing:
            self.warn(f"{what}: {users} users, {profiles} profiles, {missing} without one")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log(f"WARNING: {message}")

    def raw(self) -> dict[str, Any]:
        self.reset()
        with self.connect() as conn:
            began = time.perf_counter()
            created = conn.execute(self.raw_statement).rowcount
            seconds = time.perf_counter() - began
        self.verify("raw")
        return {"rows": created, "seconds": seconds, "rows_per_second": created / seconds}

    def profileguard(self, workers: int) -> dict[str, Any]:
        self.reset()
        command = [
            sys.executable,
            "-m",
            "profileguard",
            "--database-url",
            self.url,
            "backfill",
            "--json",
            "--workers",
            str(workers),
        ]
        began = time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        # wait4 gives this child's own rusage (peak RSS), unlike RUSAGE_CHILDREN.
        stdout_chunks: list[bytes] = []
        assert proc.stdout is not None and proc.stderr is not None
        stdout_chunks.append(proc.stdout.read())
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"backfill exited {proc.returncode}: {stderr.decode()[-2000:]}")
        report = json.loads(b"".join(stdout_chunks))
        self.verify("profileguard")
        rss_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
        return {
            "workers": workers,
            "rows": report["created"],
            "seconds": seconds,
            "rows_per_second": report["created"] / seconds,
            "internal_rows_per_second": report["rows_per_second"],
            "batches": report["batches"],
            "final_batch_size": report["batch_size"],
            "peak_rss_mb": rss_mb,
        }

    def naive(self) -> dict[str, Any]:
        self.reset()
        limit = self.args.naive_seconds
        created = 0
        with (
            self.connect() as conn,
            ProfileGuard(self.settings, max_size=1, source="bench") as guard,
        ):
            began = time.perf_counter()
            while time.perf_counter() - began < limit:
                ids = [r[0] for r in conn.execute(MISSING_IDS, (NAIVE_FETCH,)).fetchall()]
                if not ids:
                    break
                for user_id in ids:
                    guard.ensure(user_id)
                    created += 1
            seconds = time.perf_counter() - began
        rate = created / seconds
        return {
            "rows": created,
            "seconds": seconds,
            "rows_per_second": rate,
            "extrapolated": True,
            "extrapolated_seconds_for_all": self.args.users / rate if rate else None,
        }

    def run(self) -> dict[str, Any]:
        self.setup()
        names = ["raw", *(f"profileguard-{w}" for w in self.args.workers)]
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for index in range(self.args.rounds):
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                log(f"round {index + 1}/{self.args.rounds}: {name}…")
                if name == "raw":
                    rounds[name].append(self.raw())
                else:
                    rounds[name].append(self.profileguard(int(name.split("-")[1])))
                log(f"  {rounds[name][-1]['rows_per_second']:,.0f} rows/s")
        log(f"naive: per-user ensure for {self.args.naive_seconds:g} s…")
        naive = self.naive()
        log(f"  {naive['rows_per_second']:,.0f} rows/s")
        with self.connect() as conn:
            row = conn.execute("select version()").fetchone()
        return {"rounds": rounds, "naive": naive, "server": row[0] if row else "?"}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rate = statistics.median(r["rows_per_second"] for r in runs)
    return min(runs, key=lambda r: abs(r["rows_per_second"] - rate))


def summary(bench: Bench, result: dict[str, Any], where: str) -> dict[str, Any]:
    raw = median_run(result["rounds"]["raw"])
    naive = result["naive"]
    runs = {w: median_run(result["rounds"][f"profileguard-{w}"]) for w in bench.args.workers}
    approaches: dict[str, dict[str, Any]] = {"raw": raw}
    for workers, run in runs.items():
        label = f"profileguard ({workers} worker{'s' if workers > 1 else ''})"
        approaches[label] = {
            **run,
            "ratio_vs_raw": run["rows_per_second"] / raw["rows_per_second"],
            "ratio_vs_naive": run["rows_per_second"] / naive["rows_per_second"],
        }
    approaches["naive"] = naive
    targets: dict[str, bool] = {}
    for label, run in approaches.items():
        if label.startswith("profileguard"):
            targets[f"{label} >= {RAW_TARGET}x raw"] = run["ratio_vs_raw"] >= RAW_TARGET
            targets[f"{label} >= {NAIVE_TARGET:g}x naive"] = run["ratio_vs_naive"] >= NAIVE_TARGET
            targets[f"{label} peak RSS < {RSS_TARGET_MB:g} MB"] = run["peak_rss_mb"] < RSS_TARGET_MB
    return {
        "database": where,
        "server": result["server"],
        "users": bench.args.users,
        "rounds": bench.args.rounds,
        "approaches": approaches,
        "targets": targets,
        "all_rounds": result["rounds"],
        "warnings": bench.warnings,
    }


def print_table(report: dict[str, Any]) -> None:
    approaches = report["approaches"]
    raw_rate = approaches["raw"]["rows_per_second"]
    naive_rate = approaches["naive"]["rows_per_second"]
    print(
        f"backfill of {report['users']:,} users without profiles "
        f"({report['database']}; {report['server'].split(',')[0]}; "
        f"median of {report['rounds']} round(s))"
    )
    print(
        f"{'approach':<28}{'rows':>11}{'seconds':>10}{'rows/s':>11}{'vs raw':>9}"
        f"{'vs naive':>10}{'peak RSS':>10}"
    )
    for name, r in approaches.items():
        rss = f"{r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        print(
            f"{name:<28}{r['rows']:>11,}{r['seconds']:>10.2f}{r['rows_per_second']:>11,.0f}"
            f"{r['rows_per_second'] / raw_rate:>8.2f}{TIMES}"
            f"{r['rows_per_second'] / naive_rate:>9.1f}{TIMES}{rss:>10}"
        )
    for name, r in approaches.items():
        if name.startswith("profileguard"):
            print(
                f"{name}: wall time of the whole command (start-up included); its own loop "
                f"ran at {r['internal_rows_per_second']:,.0f} rows/s in {r['batches']} batches "
                f"(final batch size {r['final_batch_size']:,})"
            )
    naive = approaches["naive"]
    print(
        f"naive: time-boxed sample of {naive['rows']:,} users in {naive['seconds']:.1f} s, "
        f"rows/s EXTRAPOLATED: all {report['users']:,} users would take about "
        f"{naive['extrapolated_seconds_for_all'] / 60:,.0f} min"
    )
    for target, ok in report["targets"].items():
        print(f"target {target}: {'met' if ok else 'NOT met'}")
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Backfill throughput: profileguard backfill vs one raw INSERT … SELECT vs "
        "per-user ensure calls, on the same data."
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="server to use (a scratch database is created and dropped); default: "
        "$DATABASE_URL, else an embedded PostgreSQL",
    )
    parser.add_argument("--users", type=int, default=1_000_000, help="users to backfill")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of raw and profileguard")
    parser.add_argument(
        "--naive-seconds", type=float, default=10.0, help="time box of the per-user sample"
    )
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated --workers values to run profileguard with"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error("--workers: comma-separated integers, e.g. 1,2")
    if not all(1 <= w <= 16 for w in args.workers):
        parser.error("--workers: each value between 1 and 16")
    if args.users < 1 or args.rounds < 1 or args.naive_seconds <= 0:
        parser.error("--users and --rounds must be at least 1, --naive-seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    with database(args.database_url, SCRATCH_DB) as (url, where):
        bench = Bench(url, args)
        report = summary(bench, bench.run(), where)
    report["elapsed_seconds"] = round(time.perf_counter() - began, 1)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report)
        print(f"(total {report['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

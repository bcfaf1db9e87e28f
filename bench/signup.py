"""Signup benchmark: no trigger vs the usual per-row trigger vs profileguard, on one server.

What it measures, in one run against one PostgreSQL server and one Supabase-shaped schema
(`auth.users` plus the profile table profileguard creates, `public.profiles`):

* three configurations on the same tables:
  ``none`` (no trigger), ``per-row`` (Supabase's usual ``handle_new_user`` FOR EACH ROW
  trigger) and ``profileguard`` (its statement-level trigger, installed with
  ``profileguard.schema.install``);
* signup throughput: ``--clients`` concurrent connections (autocommit), each signup one
  single-row ``INSERT INTO auth.users``; signups/second over ``--seconds`` after a short warm-up;
* bulk: one ``INSERT INTO auth.users … SELECT … FROM generate_series(1, --bulk-rows)``, timed.

The configurations are interleaved over ``--rounds`` rounds (the order rotates each round) and
the median per configuration is reported, with ratios against the per-row trigger. After every
run with a trigger the script checks that each user has exactly one profile with the values from
its metadata, and prints a warning if not. It is a measurement, not a test: it exits 0 whatever
the figures are.

Run::

    .venv/bin/python bench/signup.py                      # embedded PostgreSQL
    .venv/bin/python bench/signup.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/signup.py --rounds 5 --seconds 10 --clients 8 --json

With ``--database-url`` (or ``DATABASE_URL``) it creates a scratch database
``profileguard_bench`` on that server and drops it at the end; the role must be able to create
databases (and roles, the first time: the Supabase roles are cluster-wide).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from benchdb import database, log
from psycopg import sql

from profileguard import schema
from profileguard import sql as sqlfiles
from profileguard.config import CONFIG_FILE, Settings, load_settings
from profileguard.installation import TRIGGER_NAME

SCRATCH_DB = "profileguard_bench"
CONFIGS = ("none", "per-row", "profileguard")
TIMES = "\N{MULTIPLICATION SIGN}"
SIGNUP_TARGET = 0.97  # profileguard signups/s ÷ per-row signups/s, at least
BULK_TARGET = 0.80  # profileguard bulk seconds ÷ per-row bulk seconds, at most

PER_ROW_FUNCTION = """
create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
    insert into public.profiles (id, full_name, avatar_url, username)
    values (new.id, new.raw_user_meta_data->>'full_name', new.raw_user_meta_data->>'avatar_url',
            new.raw_user_meta_data->>'user_name');
    return new;
end;
$$
"""
PER_ROW_TRIGGER = """
create trigger on_auth_user_created after insert on auth.users
for each row execute procedure public.handle_new_user()
"""
DROP_PER_ROW = (
    "drop trigger if exists on_auth_user_created on auth.users",
    "drop function if exists public.handle_new_user()",
)

SIGNUP = (
    "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
    " values (%s, 'authenticated', 'authenticated', %s, %s::jsonb, now())"
)
BULK = (
    "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
    " select gen_random_uuid(), 'authenticated', 'authenticated',"
    " 'bulk_' || g || '@bench.example',"
    " jsonb_build_object('full_name', 'Bulk User ' || g,"
    " 'avatar_url', 'https://example.com/avatars/' || g || '.png', 'user_name', 'bulk_' || g),"
    " now()"
    " from generate_series(1, %s) g"
)
# Users without exactly one profile, or whose profile differs from what the per-row trigger makes.
CHECK = """
select
    (select count(*) from auth.users) as users,
    (select count(*) from public.profiles) as profiles,
    (select count(*) from auth.users u
      where not exists (select from public.profiles p where p.id = u.id)) as missing,
    (select count(*) from auth.users u join public.profiles p on p.id = u.id
      where p.username is distinct from u.raw_user_meta_data->>'user_name'
         or p.full_name is distinct from u.raw_user_meta_data->>'full_name'
         or p.avatar_url is distinct from u.raw_user_meta_data->>'avatar_url') as different
"""


@dataclass
class Results:
    """Per-configuration figures of every round, and the warnings seen on the way."""

    signups: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    bulk: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONFIGS, 0))
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log(f"WARNING: {message}")


class Bench:
    """The benchmark against one database (`url`), with profileguard settings pointing at it."""

    def __init__(self, url: str, args: argparse.Namespace):
        self.url = url
        self.args = args
        self.settings: Settings = load_settings(env={}, database_url=url)
        self.results = Results()
        self.server: dict[str, str] = {}
        self._run = uuid.uuid4().hex[:6]

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        with self.connect() as conn:
            conn.execute(sqlfiles.read("supabase_auth.sql"))
            for name in ("server_version", "synchronous_commit", "fsync", "shared_buffers"):
                row = conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone()
                self.server[name] = str(row[0]) if row else "?"
            exists = conn.execute("select to_regclass('public.profiles') is not null").fetchone()
        if not (exists and exists[0]):
            schema.install(self.settings, create_profile_table=True)
        schema.uninstall(self.settings)

    def configure(self, config: str) -> None:
        """Leave exactly the trigger of `config` on auth.users (and empty tables)."""
        schema.uninstall(self.settings)
        with self.connect() as conn:
            for statement in DROP_PER_ROW:
                conn.execute(statement)
            if config == "per-row":
                conn.execute(PER_ROW_FUNCTION)
                conn.execute(PER_ROW_TRIGGER)
        if config == "profileguard":
            schema.install(self.settings)
        with self.connect() as conn:
            triggers = conn.execute(
                "select tgname from pg_trigger where tgrelid = 'auth.users'::regclass"
                " and not tgisinternal order by 1"
            ).fetchall()
        expected = {
            "none": [],
            "per-row": ["on_auth_user_created"],
            "profileguard": [TRIGGER_NAME],
        }[config]
        found = [str(t[0]) for t in triggers]
        if found != expected:
            self.results.warn(f"{config}: triggers on auth.users are {found}, expected {expected}")

    def reset(self) -> None:
        """Empty the tables and start the next measurement from a checkpoint."""
        with self.connect() as conn:
            conn.execute("truncate auth.users cascade")
            conn.execute("vacuum analyze auth.users")
            conn.execute("vacuum analyze public.profiles")
            with contextlib.suppress(psycopg.Error):
                conn.execute("checkpoint")

    def verify(self, config: str, what: str) -> None:
        if config == "none":
            return
        with self.connect() as conn:
            row = conn.execute(CHECK).fetchone()
            failures = 0
            if config == "profileguard":
                found = conn.execute(
                    "select count(*) from profileguard.events where kind = 'failure'"
                ).fetchone()
                failures = int(found[0]) if found else 0
        assert row is not None
        users, profiles, missing, different = (int(v) for v in row)
        if users == 0:
            self.results.warn(f"{config} {what}: no users were inserted")
        if missing or profiles != users:
            self.results.warn(
                f"{config} {what}: {users} users but {profiles} profiles ({missing} users without"
                " a profile)"
            )
        if different:
            self.results.warn(
                f"{config} {what}: {different} profiles differ from the user's metadata"
            )
        if failures:
            self.results.warn(f"{config} {what}: {failures} failure events recorded")

    # -- measurements -------------------------------------------------------------------------

    def signups(self, config: str, round_no: int) -> float:
        """Signups/second with `--clients` concurrent connections over `--seconds`."""
        clients: int = self.args.clients
        seconds: float = self.args.seconds
        warmup: float = self.args.warmup
        conns = [self.connect() for _ in range(clients)]
        counts = [0] * clients
        errors = [0] * clients
        ready = threading.Barrier(clients + 1)
        window: list[float] = []

        def client(index: int) -> None:
            conn = conns[index]
            prefix = f"{config[0]}{self._run}r{round_no}c{index}n"
            ready.wait()
            start, end = window
            n = 0
            while True:
                began = time.perf_counter()
                if began >= end:
                    break
                n += 1
                name = f"{prefix}{n}"
                meta = json.dumps(
                    {
                        "full_name": f"Bench User {name}",
                        "avatar_url": f"https://example.com/avatars/{name}.png",
                        "user_name": name,
                    }
                )
                try:
                    conn.execute(SIGNUP, (uuid.uuid4(), f"{name}@bench.example", meta))
                except psycopg.Error:
                    errors[index] += 1
                    continue
                if began >= start and time.perf_counter() <= end:
                    counts[index] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        try:
            for thread in threads:
                thread.start()
            now = time.perf_counter()
            window.extend((now + warmup, now + warmup + seconds))
            ready.wait()
            for thread in threads:
                thread.join()
        finally:
            for conn in conns:
                conn.close()
        if sum(errors):
            self.results.errors[config] += sum(errors)
            self.results.warn(f"{config}: {sum(errors)} signups failed")
        return sum(counts) / seconds

    def bulk(self) -> float:
        """Seconds for one INSERT … SELECT of `--bulk-rows` users (autocommit, so with commit)."""
        with self.connect() as conn:
            began = time.perf_counter()
            conn.execute(BULK, (self.args.bulk_rows,))
            elapsed: float = time.perf_counter() - began
            return elapsed

    def run(self) -> Results:
        self.setup()
        for round_no in range(self.args.rounds):
            shift = round_no % len(CONFIGS)
            order = CONFIGS[shift:] + CONFIGS[:shift]
            for config in order:
                self.configure(config)
                self.reset()
                rate = self.signups(config, round_no)
                self.results.signups[config].append(rate)
                self.verify(config, "signups")
                line = f"round {round_no + 1}/{self.args.rounds} {config:>12}: "
                line += f"{rate:9.1f} signups/s"
                if self.args.bulk_rows > 0:
                    self.reset()
                    seconds = self.bulk()
                    self.results.bulk[config].append(seconds)
                    self.verify(config, "bulk")
                    line += f", bulk {self.args.bulk_rows} rows {seconds:7.3f} s"
                log(line)
        self.configure("none")
        self.reset()
        return self.results


# -- report ------------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def summary(bench: Bench, args: argparse.Namespace, database: str) -> dict[str, Any]:
    res = bench.results
    signups = {c: median(res.signups[c]) for c in CONFIGS}
    bulk = {c: median(res.bulk[c]) for c in CONFIGS}
    configs = {
        c: {
            "signups_per_second": signups[c],
            "signups_ratio_vs_per_row": ratio(signups[c], signups["per-row"]),
            "signups_per_second_rounds": res.signups[c],
            "bulk_seconds": bulk[c],
            "bulk_ratio_vs_per_row": ratio(bulk[c], bulk["per-row"]),
            "bulk_seconds_rounds": res.bulk[c],
            "failed_signups": res.errors[c],
        }
        for c in CONFIGS
    }
    signup_ratio = ratio(signups["profileguard"], signups["per-row"])
    bulk_ratio = ratio(bulk["profileguard"], bulk["per-row"])
    return {
        "database": database,
        "server": bench.server,
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "bulk_rows": args.bulk_rows,
        "configs": configs,
        "checks": {
            "signup_throughput_ratio": signup_ratio,
            "signup_throughput_target_min": SIGNUP_TARGET,
            "signup_throughput_met": None
            if signup_ratio is None
            else signup_ratio >= SIGNUP_TARGET,
            "bulk_time_ratio": bulk_ratio,
            "bulk_time_target_max": BULK_TARGET,
            "bulk_time_met": None if bulk_ratio is None else bulk_ratio <= BULK_TARGET,
        },
        "warnings": res.warnings,
    }


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def print_table(report: dict[str, Any]) -> None:
    server = report["server"]
    print(
        f"PostgreSQL {server.get('server_version', '?')} ({report['database']}; "
        f"synchronous_commit={server.get('synchronous_commit', '?')}, "
        f"fsync={server.get('fsync', '?')}, shared_buffers={server.get('shared_buffers', '?')})"
    )
    print(
        f"{report['clients']} clients {TIMES} {report['seconds']:g} s per round "
        f"(+{report['warmup']:g} s warm-up), {report['rounds']} rounds, "
        f"bulk {report['bulk_rows']} rows; medians over rounds"
    )
    print()
    vs = f"{TIMES} per-row"
    header = f"{'config':<14}{'signups/s':>12}{vs:>11}{'bulk s':>10}{vs:>11}"
    print(header)
    print("-" * len(header))
    for name, c in report["configs"].items():
        print(
            f"{name:<14}{fmt(c['signups_per_second'], '.1f'):>12}"
            f"{fmt(c['signups_ratio_vs_per_row'], '.3f'):>11}"
            f"{fmt(c['bulk_seconds'], '.3f'):>10}{fmt(c['bulk_ratio_vs_per_row'], '.3f'):>11}"
        )
    print()
    checks = report["checks"]
    print(
        "profileguard signup throughput = "
        f"{fmt(checks['signup_throughput_ratio'], '.2f', TIMES)} per-row trigger "
        f"(target ≥ {SIGNUP_TARGET:.2f})"
    )
    rows = report["bulk_rows"]
    size = "100k" if rows == 100_000 else f"{rows}-row"
    print(
        f"profileguard {size} bulk insert time = "
        f"{fmt(checks['bulk_time_ratio'], '.2f', TIMES)} per-row trigger "
        f"(target ≤ {BULK_TARGET:.2f})"
    )
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")


# -- databases ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Signup throughput and bulk insert time: no trigger, the per-row "
        "handle_new_user trigger and profileguard's statement-level trigger."
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help=f"server to use (a scratch database {SCRATCH_DB} is created and dropped); "
        "default: $DATABASE_URL, else an embedded PostgreSQL",
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent signup connections")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--bulk-rows", type=int, default=100_000, help="rows of the bulk insert")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    positive: dict[str, Callable[[Any], bool]] = {
        "clients": lambda v: v >= 1,
        "seconds": lambda v: v > 0,
        "warmup": lambda v: v >= 0,
        "rounds": lambda v: v >= 1,
        "bulk_rows": lambda v: v >= 0,
    }
    for name, ok in positive.items():
        if not ok(getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)} is out of range")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if Path(CONFIG_FILE).exists():
        log(f"WARNING: ./{CONFIG_FILE} exists and is read by profileguard's settings")
    began = time.perf_counter()
    with database(args.database_url, SCRATCH_DB) as (url, where):
        bench = Bench(url, args)
        bench.run()
        report = summary(bench, args, where)
    report["elapsed_seconds"] = round(time.perf_counter() - began, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        print(f"(total {report['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

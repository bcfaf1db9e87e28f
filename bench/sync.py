"""Login benchmark: profileguard's UPDATE triggers vs none, load by pgbench.

What it measures, in one run against one PostgreSQL server and one Supabase-shaped schema
(`auth.users`, `auth.identities`, the starter `public.profiles`) holding ``--users`` users that
all have a profile (made by profileguard's signup trigger, installed in both configurations):

* two configurations: ``none`` (profileguard's UPDATE triggers dropped) and ``sync`` (installed
  with ``full_name`` and ``avatar_url`` set to ``follow``, redaction on: the triggers watch
  ``raw_user_meta_data`` and ``deleted_at``);
* two workloads driven server-side by pgbench, as ``supabase_auth_admin`` with
  ``search_path = auth``, on random users:
  ``login`` — a password login as Supabase Auth makes it: ``last_sign_in_at`` (and
  ``updated_at``) on the user, ``last_sign_in_at`` on its identity, one transaction;
  ``relogin`` — a social re-login: ``raw_user_meta_data`` rewritten with the values it already
  holds (as the provider sends them again), then ``last_sign_in_at``, one transaction.

The configurations are interleaved over ``--rounds`` rounds (the order rotates each round; the
machine may be shared, so the report gives medians and the spread min-max). After every run it
checks that no profile was written (``n_tup_upd`` of the profile table, read after the statistics
are flushed at the end of each pgbench session) and that no failure was recorded. It names the
server, its version and its ``jit`` setting. It is a measurement, not a test: it exits 0 whatever
the figures are.

Run::

    .venv/bin/python bench/sync.py                      # embedded PostgreSQL
    .venv/bin/python bench/sync.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from benchdb import database, log
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from signup import SERVER_SETTINGS, find_pgbench

from profileguard import sql as sqlfiles
from profileguard.config import CONFIG_FILE, load_settings
from profileguard.install import install
from profileguard.installation import UPDATE_TRIGGER_NAMES as UPDATE_TRIGGERS

SCRATCH_DB = "profileguard_bench_sync"
CONFIGS = ("none", "sync")
WORKLOADS = ("login", "relogin")
TARGETS = {"login": 0.97, "relogin": 0.95}  # sync TPS ÷ none TPS, at least
TIMES = "\N{MULTIPLICATION SIGN}"

# Users 1..N: the id, email and metadata of user n are functions of n, so pgbench can rewrite the
# metadata with the very values it holds.
SEED = """
insert into auth.users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
    created_at, updated_at, last_sign_in_at)
select '00000000-0000-0000-0000-000000000000', md5('user' || g)::uuid, 'authenticated',
    'authenticated', 'user' || g || '@bench.example',
    '{"provider": "google", "providers": ["google"]}',
    jsonb_build_object('full_name', 'User ' || g, 'avatar_url',
        'https://example.com/avatars/' || g || '.png', 'user_name', 'user' || g,
        'email', 'user' || g || '@bench.example', 'email_verified', true,
        'sub', 'sub' || g, 'iss', 'https://accounts.google.com'),
    now(), now(), now()
from generate_series(1, %(n)s) g;
insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at,
    created_at, updated_at)
select 'sub' || g, md5('user' || g)::uuid,
    jsonb_build_object('sub', 'sub' || g, 'email', 'user' || g || '@bench.example'), 'google',
    now(), now(), now()
from generate_series(1, %(n)s) g;
"""

LOGIN_SCRIPT = r"""
\set n random(1, :users)
begin;
update users set last_sign_in_at = now(), updated_at = now()
    where id = md5('user' || :n::text)::uuid;
update identities set last_sign_in_at = now(), updated_at = now()
    where provider = 'google' and provider_id = 'sub' || :n::text;
commit;
"""

RELOGIN_SCRIPT = r"""
\set n random(1, :users)
begin;
update users set raw_user_meta_data = jsonb_build_object('full_name', 'User ' || :n::text,
        'avatar_url', 'https://example.com/avatars/' || :n::text || '.png',
        'user_name', 'user' || :n::text, 'email', 'user' || :n::text || '@bench.example',
        'email_verified', true, 'sub', 'sub' || :n::text, 'iss', 'https://accounts.google.com'),
    updated_at = now()
    where id = md5('user' || :n::text)::uuid;
update users set last_sign_in_at = now(), updated_at = now()
    where id = md5('user' || :n::text)::uuid;
update identities set last_sign_in_at = now(), updated_at = now()
    where provider = 'google' and provider_id = 'sub' || :n::text;
commit;
"""


class Bench:
    """The benchmark against one database (`url`)."""

    def __init__(self, url: str, args: argparse.Namespace):
        self.url = url
        self.args = args
        self.settings = replace(
            load_settings(env={}, database_url=url),
            sync_policies={"full_name": "follow", "avatar_url": "follow"},
        )
        self.server: dict[str, str] = {}
        self.pgbench = find_pgbench()
        self.workdir = Path(tempfile.mkdtemp(prefix="pg_sync_bench_"))
        (self.workdir / "login.sql").write_text(LOGIN_SCRIPT, encoding="utf-8")
        (self.workdir / "relogin.sql").write_text(RELOGIN_SCRIPT, encoding="utf-8")
        self.tps: dict[str, dict[str, list[float]]] = {
            w: {c: [] for c in CONFIGS} for w in WORKLOADS
        }
        self.warnings: list[str] = []

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log(f"WARNING: {message}")

    def setup(self) -> None:
        with self.connect() as conn:
            conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
            for name in SERVER_SETTINGS:
                row = conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone()
                self.server[name] = str(row[0]) if row else "?"
            row = conn.execute("select pg_jit_available()").fetchone()
            self.server["jit_available"] = "yes" if row and row[0] else "no"
        install(self.settings, create_profile_table=True)
        with self.connect() as conn:
            for statement in SEED.split(";\n"):
                if statement.strip():
                    conn.execute(statement, {"n": self.args.users})
            conn.execute("vacuum analyze auth.users")
            conn.execute("vacuum analyze auth.identities")
            conn.execute("vacuum analyze public.profiles")
            row = conn.execute("select count(*) from public.profiles").fetchone()
        if not row or int(row[0]) != self.args.users:
            self.warn(f"{row} profiles for {self.args.users} users after seeding")

    def configure(self, config: str) -> None:
        if config == "sync":
            install(self.settings)
        else:
            with self.connect() as conn:
                for name in UPDATE_TRIGGERS:
                    conn.execute(
                        sql.SQL("drop trigger if exists {} on auth.users").format(
                            sql.Identifier(name)
                        )
                    )
        with self.connect() as conn:
            found = {
                str(r[0])
                for r in conn.execute(
                    "select tgname from pg_trigger where tgrelid = 'auth.users'::regclass"
                    " and not tgisinternal"
                ).fetchall()
            }
        if (config == "sync") != (set(UPDATE_TRIGGERS) <= found):
            self.warn(f"{config}: triggers on auth.users are {sorted(found)}")

    def _written(self) -> tuple[int, int]:
        """(profile rows updated, failure events) as the statistics have them now."""
        with self.connect() as conn:
            conn.execute("select pg_stat_clear_snapshot()")
            row = conn.execute(
                "select (select n_tup_upd from pg_stat_user_tables"
                "        where relid = 'public.profiles'::regclass),"
                " (select count(*) from profileguard.events where kind = 'failure')"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def _pgbench(self, workload: str, seconds: float) -> float:
        info = conninfo_to_dict(self.url)
        command = [
            self.pgbench,
            "--no-vacuum",
            "--protocol=prepared",
            f"--file={self.workdir / (workload + '.sql')}",
            f"--define=users={self.args.users}",
            f"--client={self.args.clients}",
            f"--jobs={min(self.args.clients, self.args.jobs)}",
            f"--time={max(1, round(seconds))}",
            f"--host={info.get('host') or '127.0.0.1'}",
            f"--port={info.get('port') or 5432}",
            "--username=supabase_auth_admin",
            str(info.get("dbname")),
        ]
        env = {**os.environ, "PGOPTIONS": "-c search_path=auth"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()}")
        found = re.search(r"^tps = ([0-9.]+)", done.stdout, re.M)
        failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
        if failed and int(failed.group(1)):
            self.warn(f"{workload}: {failed.group(1)} transactions failed")
        if not found:
            raise RuntimeError(f"could not read pgbench's output:\n{done.stdout}")
        return float(found.group(1))

    def measure(self, config: str, workload: str) -> float:
        with self.connect() as conn:
            conn.execute("vacuum auth.users")
        before = self._written()
        if self.args.warmup > 0:
            self._pgbench(workload, self.args.warmup)
        tps = self._pgbench(workload, self.args.seconds)
        time.sleep(0.5)  # the pgbench sessions ended: their statistics are flushed
        after = self._written()
        if after != before:
            self.warn(
                f"{config} {workload}: profiles updated {after[0] - before[0]}, "
                f"failures {after[1] - before[1]} (expected none)"
            )
        return tps

    def run(self) -> None:
        self.setup()
        for round_no in range(self.args.rounds):
            shift = round_no % len(CONFIGS)
            for config in CONFIGS[shift:] + CONFIGS[:shift]:
                self.configure(config)
                for workload in WORKLOADS:
                    tps = self.measure(config, workload)
                    self.tps[workload][config].append(tps)
                    log(
                        f"round {round_no + 1}/{self.args.rounds} {config:>5} {workload:>8}: "
                        f"{tps:8.1f} tps"
                    )

    def report(self, where: str) -> dict[str, Any]:
        workloads: dict[str, Any] = {}
        for workload in WORKLOADS:
            runs = self.tps[workload]
            medians = {c: statistics.median(runs[c]) for c in CONFIGS}
            # Ratio of the medians, and the median of the per-round ratios (rounds interleave
            # both configurations, so a round's ratio compares like with like).
            per_round = [s / n for s, n in zip(runs["sync"], runs["none"], strict=True) if n]
            ratio = medians["sync"] / medians["none"] if medians["none"] else None
            workloads[workload] = {
                "tps": {
                    c: {
                        "median": medians[c],
                        "min": min(runs[c]),
                        "max": max(runs[c]),
                        "runs": runs[c],
                    }
                    for c in CONFIGS
                },
                "ratio": ratio,
                "ratio_median_of_rounds": statistics.median(per_round) if per_round else None,
                "target_min": TARGETS[workload],
                "met": ratio is not None and ratio >= TARGETS[workload],
            }
        return {
            "database": where,
            "server": self.server,
            "users": self.args.users,
            "clients": self.args.clients,
            "jobs": self.args.jobs,
            "seconds": self.args.seconds,
            "warmup": self.args.warmup,
            "rounds": self.args.rounds,
            "sync": self.settings.describe()["sync"],
            "workloads": workloads,
            "warnings": self.warnings,
        }


def print_table(report: dict[str, Any]) -> None:
    server = report["server"]
    print(
        f"PostgreSQL {server.get('server_version', '?')} ({report['database']}); "
        f"jit={server.get('jit', '?')} (available: {server.get('jit_available', '?')}, "
        f"jit_above_cost={server.get('jit_above_cost', '?')}), "
        f"synchronous_commit={server.get('synchronous_commit', '?')}, "
        f"fsync={server.get('fsync', '?')}, shared_buffers={server.get('shared_buffers', '?')}"
    )
    print(
        f"pgbench as supabase_auth_admin on {report['users']} users: {report['clients']} "
        f"clients, {report['jobs']} threads, {report['seconds']:g} s per run "
        f"(+{report['warmup']:g} s warm-up), {report['rounds']} interleaved rounds; "
        f"median [min-max]; update policies {report['sync']}"
    )
    print()
    header = (
        f"{'workload':<10}{'none TPS':>24}{'sync TPS':>24}{'ratio':>8}{'per-round':>11}"
        f"{'target':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, w in report["workloads"].items():
        cells = [
            f"{w['tps'][c]['median']:.0f} [{w['tps'][c]['min']:.0f}-{w['tps'][c]['max']:.0f}]"
            for c in CONFIGS
        ]
        print(
            f"{name:<10}{cells[0]:>24}{cells[1]:>24}{w['ratio']:>8.3f}"
            f"{w['ratio_median_of_rounds']:>11.3f}{'≥ ' + format(w['target_min'], '.2f'):>8}"
            f"  {'met' if w['met'] else 'NOT met'}"
        )
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Login and social re-login TPS under pgbench, with profileguard's UPDATE "
        "triggers and without."
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help=f"server to use (a scratch database {SCRATCH_DB} is created and "
        "dropped); default: $DATABASE_URL, else an embedded PostgreSQL",
    )
    parser.add_argument("--users", type=int, default=20_000, help="users (all with a profile)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--jobs", type=int, default=2, help="pgbench threads")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    for name in ("users", "clients", "jobs", "seconds", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: {getattr(args, name)} is out of range")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if Path(CONFIG_FILE).exists():
        log(f"WARNING: ./{CONFIG_FILE} exists and is read by profileguard's settings")
    began = time.perf_counter()
    with database(args.database_url, SCRATCH_DB) as (url, where):
        bench = Bench(url, args)
        bench.run()
        report = bench.report(where)
    report["elapsed_seconds"] = round(time.perf_counter() - began, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        print(f"(total {report['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Signup benchmark: no trigger vs the documented per-row trigger vs profileguard, load by pgbench.

What it measures, in one run against one PostgreSQL server and one Supabase-shaped schema
(`auth.users`, `auth.identities` and the starter profile table `public.profiles`: username unique
with a length check):

* four configurations on the same tables: ``none`` (no trigger), ``per-row`` (Supabase's
  documented ``handle_new_user`` FOR EACH ROW trigger), ``profileguard`` (its statement-level
  trigger with the default mapping, installed with ``profileguard.install.install``) and
  ``pg-same-map`` (the same trigger given the per-row trigger's mapping: full_name, avatar_url
  and username each copied from one metadata key, no username derivation). The last two tell
  apart what profileguard's guarantees cost (never failing a signup: an exception block, bounded
  lock waits, no JIT) and what the default mapping's username rule costs (three name sources,
  Unicode cleaning, reserved names, a collision-safe suffix for names a client chose);
* signups driven server-side by pgbench: each transaction is shaped like Supabase Auth's, as
  ``supabase_auth_admin`` with ``search_path = auth`` — insert the user with an empty role,
  update its role, insert its identity, commit. ``--clients`` connections for ``--seconds`` after
  ``--warmup``; TPS from pgbench, p50/p99 latency from its per-transaction log (``-l``);
* bulk: one ``INSERT INTO auth.users … SELECT … FROM generate_series(1, --bulk-rows)``, timed;
  and one whose usernames collide (``'bulk_' || mod(g, rows / 20)``: 20 users share each name, so
  95 % of them are given a suffix), timed for ``none`` and ``profileguard`` only (the per-row
  trigger fails on a taken username, ``pg-same-map`` records every user as a failure) and set
  against the per-row trigger's bulk of unique names.

The configurations are interleaved over ``--rounds`` rounds (the order rotates each round); the
report gives the median and the spread (min-max) over rounds, and ratios against the per-row
trigger. After every run it checks that each user has exactly one profile with the values from
its metadata. It names the server, its version and its ``jit`` setting: on a server with JIT
(Debian's and most hosted PostgreSQL) a plan over ``jit_above_cost`` compiles on every call.
It is a measurement, not a test: it exits 0 whatever the figures are.

Run::

    .venv/bin/python bench/signup.py                      # embedded PostgreSQL
    .venv/bin/python bench/signup.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

With ``--database-url`` (or ``DATABASE_URL``) it creates a scratch database
``profileguard_bench_signup`` on that server and drops it at the end. pgbench comes from
``$PGBENCH``, the PATH or /usr/lib/postgresql/*/bin.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from benchdb import database, log
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from profileguard import sql as sqlfiles
from profileguard.config import CONFIG_FILE, Settings, load_settings, parse_mapping
from profileguard.install import install, uninstall
from profileguard.installation import TRIGGER_NAME

SCRATCH_DB = "profileguard_bench_signup"
CONFIGS = ("none", "per-row", "profileguard", "pg-same-map")
PROFILEGUARD_CONFIGS = ("profileguard", "pg-same-map")
TIMES = "\N{MULTIPLICATION SIGN}"
TPS_TARGET = 0.97  # profileguard TPS ÷ per-row TPS, at least
P99_TARGET = 1.20  # profileguard p99 ÷ per-row p99, at most
BULK_TARGET = 0.80  # profileguard bulk seconds ÷ per-row bulk seconds, at most (colliding too)

# Supabase's documented trigger, on the starter table (its username column included).
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
# pg-same-map: what the per-row trigger copies, and no collision-safe username column (a taken
# name is then a recorded failure, and the signup commits).
SAME_MAP = {
    "full_name": ["raw_user_meta_data.full_name"],
    "avatar_url": ["raw_user_meta_data.avatar_url"],
    "username": ["raw_user_meta_data.user_name"],
}
DROP_PER_ROW = (
    "drop trigger if exists on_auth_user_created on auth.users",
    "drop function if exists public.handle_new_user()",
)

# One signup as Supabase Auth makes it (run as supabase_auth_admin, search_path = auth).
# :n counts the client's transactions and :pfx names the run, so names and emails are unique.
GOTRUE_SCRIPT = r"""
\set n :n + 1
begin;
insert into users (instance_id, id, aud, role, email, encrypted_password, raw_app_meta_data,
    raw_user_meta_data, created_at, updated_at)
values ('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', '',
    :pfx::text || :client_id::text || 'n' || :n::text || '@bench.example',
    '$2a$10$abcdefghijklmnopqrstuuKzSvmm0GVKOQY1WUr6sGmO2X1aIH1Ae',
    '{"provider": "email", "providers": ["email"]}',
    jsonb_build_object('full_name', 'Bench User ' || :client_id::text || ' ' || :n::text,
        'avatar_url', 'https://example.com/avatars/' || :n::text || '.png',
        'user_name', :pfx::text || :client_id::text || 'n' || :n::text),
    now(), now())
returning id as uid \gset
update users set role = 'authenticated', updated_at = now() where id = :uid::uuid;
insert into identities (provider_id, user_id, identity_data, provider, last_sign_in_at,
    created_at, updated_at)
values (:uid::text, :uid::uuid, jsonb_build_object('sub', :uid::text, 'email',
    :pfx::text || :client_id::text || 'n' || :n::text || '@bench.example'), 'email', now(),
    now(), now());
commit;
"""

BULK = (
    "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
    " select gen_random_uuid(), 'authenticated', 'authenticated',"
    " 'bulk_' || g || '@bench.example',"
    " jsonb_build_object('full_name', 'Bulk User ' || g,"
    " 'avatar_url', 'https://example.com/avatars/' || g || '.png', 'user_name', 'bulk_' || g),"
    " now()"
    " from generate_series(1, %s) g"
)
# The same users with 20 to a username (the modulus is the row count / 20): the two parameters
# are that row count.
COLLIDING_BULK = BULK.replace(
    "'user_name', 'bulk_' || g)", "'user_name', 'bulk_' || mod(g, greatest(%s / 20, 1)))"
)
assert COLLIDING_BULK.count("%s") == 2
# The configurations whose colliding bulk inserts (the others fail on a taken username).
COLLIDING_CONFIGS = ("none", "profileguard")
# Users without exactly one profile, or whose profile differs from what the per-row trigger makes
# (profileguard gives a name a user typed with a hash suffix: `name_1a2b3c4d`).
CHECK = """
select
    (select count(*) from auth.users) as users,
    (select count(*) from public.profiles) as profiles,
    (select count(*) from auth.users u
      where not exists (select from public.profiles p where p.id = u.id)) as missing,
    (select count(*) from auth.users u join public.profiles p on p.id = u.id
      where (p.username is distinct from u.raw_user_meta_data->>'user_name'
             and p.username not like (u.raw_user_meta_data->>'user_name') || '\\_%')
         or p.full_name is distinct from u.raw_user_meta_data->>'full_name'
         or p.avatar_url is distinct from u.raw_user_meta_data->>'avatar_url') as different
"""
SERVER_SETTINGS = (
    "server_version",
    "jit",
    "jit_above_cost",
    "synchronous_commit",
    "fsync",
    "shared_buffers",
)


def profileguard_settings(url: str, config: str) -> Settings:
    """profileguard's settings for `config` (one of PROFILEGUARD_CONFIGS) on the database `url`."""
    settings = load_settings(env={}, database_url=url)
    if config == "pg-same-map":
        settings = replace(
            settings,
            mapping=parse_mapping(SAME_MAP),
            mapping_is_default=False,
            username_column=None,
        )
    return settings


def set_trigger(url: str, config: str) -> None:
    """Leave exactly the trigger of `config` on auth.users of the database `url` (profileguard
    uninstalled first; its tables and the profile table stay)."""
    uninstall(profileguard_settings(url, "profileguard"))
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in DROP_PER_ROW:
            conn.execute(statement)
        if config == "per-row":
            conn.execute(PER_ROW_FUNCTION)
            conn.execute(PER_ROW_TRIGGER)
    if config in PROFILEGUARD_CONFIGS:
        install(profileguard_settings(url, config))


def find_pgbench() -> str:
    """pgbench from $PGBENCH, the PATH or the newest /usr/lib/postgresql/*/bin."""
    found = os.environ.get("PGBENCH") or shutil.which("pgbench")
    if not found:
        candidates = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/pgbench"), key=lambda p: int(Path(p).parts[-3])
        )
        found = candidates[-1] if candidates else None
    if not found:
        sys.exit(
            "pgbench not found: install postgresql-client (Debian: postgresql-15) or set "
            "PGBENCH to its path"
        )
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Run:
    """One pgbench run: TPS, p50/p99 latency (ms), failed transactions."""

    tps: float
    p50: float
    p99: float
    failed: int


@dataclass
class Results:
    """Per-configuration figures of every round, and the warnings seen on the way."""

    runs: dict[str, list[Run]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    bulk: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    colliding: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
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
        self.pgbench = find_pgbench()
        self.workdir = Path(tempfile.mkdtemp(prefix="pg_signup_bench_"))
        (self.workdir / "gotrue.sql").write_text(GOTRUE_SCRIPT, encoding="utf-8")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        with self.connect() as conn:
            conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
            for name in SERVER_SETTINGS:
                row = conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone()
                self.server[name] = str(row[0]) if row else "?"
            row = conn.execute("select pg_jit_available()").fetchone()
            self.server["jit_available"] = "yes" if row and row[0] else "no"
            exists = conn.execute("select to_regclass('public.profiles') is not null").fetchone()
        if not (exists and exists[0]):
            install(self.settings, create_profile_table=True)
        uninstall(self.settings)

    def configure(self, config: str) -> None:
        """Leave exactly the trigger of `config` on auth.users, and check it."""
        set_trigger(self.url, config)
        with self.connect() as conn:
            triggers = conn.execute(
                "select tgname from pg_trigger where tgrelid = 'auth.users'::regclass"
                " and not tgisinternal order by 1"
            ).fetchall()
        expected = ["on_auth_user_created"] if config == "per-row" else []
        if config in PROFILEGUARD_CONFIGS:
            # the insert trigger, and the update triggers that keep profiles in step (they do not
            # fire on a signup's role update: it changes no mapped column)
            expected = sorted(
                [TRIGGER_NAME, "profileguard_after_update", "profileguard_after_update_row"]
            )
        found = [str(t[0]) for t in triggers]
        if found != expected:
            self.results.warn(f"{config}: triggers on auth.users are {found}, expected {expected}")

    def reset(self) -> None:
        """Empty the tables and start the next measurement from a checkpoint."""
        with self.connect() as conn:
            conn.execute("truncate auth.users cascade")
            conn.execute("vacuum analyze auth.users")
            conn.execute("vacuum analyze auth.identities")
            conn.execute("vacuum analyze public.profiles")
            with contextlib.suppress(psycopg.Error):
                conn.execute("checkpoint")

    def verify(self, config: str, what: str) -> None:
        if config == "none":
            return
        with self.connect() as conn:
            row = conn.execute(CHECK).fetchone()
            failures = 0
            if config in PROFILEGUARD_CONFIGS:
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

    def _pgbench(self, seconds: float, prefix: str, log_prefix: Path | None) -> str:
        info = conninfo_to_dict(self.url)
        command = [
            self.pgbench,
            "--no-vacuum",
            "--protocol=prepared",
            f"--file={self.workdir / 'gotrue.sql'}",
            "--define=n=0",
            f"--define=pfx={prefix}",
            f"--client={self.args.clients}",
            f"--jobs={min(self.args.clients, self.args.jobs)}",
            f"--time={max(1, round(seconds))}",
            f"--host={info.get('host') or '127.0.0.1'}",
            f"--port={info.get('port') or 5432}",
            "--username=supabase_auth_admin",
            str(info.get("dbname")),
        ]
        if log_prefix is not None:
            command[1:1] = ["--log", f"--log-prefix={log_prefix}"]
        env = {**os.environ, "PGOPTIONS": "-c search_path=auth"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def signups(self, config: str, round_no: int) -> Run:
        """pgbench's TPS and the p50/p99 latency of its logged transactions."""
        tag = f"{config[0]}{round_no}"
        if self.args.warmup > 0:
            self._pgbench(self.args.warmup, f"{tag}w", None)
        logs = self.workdir / f"{tag}"
        for old in glob.glob(f"{logs}*"):
            os.unlink(old)
        out = self._pgbench(self.args.seconds, f"{tag}m", logs)
        tps_match = re.search(r"^tps = ([0-9.]+)", out, re.M)
        failed_match = re.search(r"number of failed transactions: (\d+)", out)
        latencies: list[float] = []
        for path in glob.glob(f"{logs}*"):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    fields = line.split()
                    if len(fields) >= 3 and fields[2].isdigit():
                        latencies.append(int(fields[2]) / 1000.0)
            os.unlink(path)
        if not tps_match or not latencies:
            raise RuntimeError(f"could not read pgbench's output:\n{out}")
        run = Run(
            tps=float(tps_match.group(1)),
            p50=percentile(latencies, 0.50),
            p99=percentile(latencies, 0.99),
            failed=int(failed_match.group(1)) if failed_match else 0,
        )
        if run.failed:
            self.results.warn(f"{config}: {run.failed} signups failed")
        return run

    def bulk(self, colliding: bool = False) -> float:
        """Seconds for one INSERT … SELECT of `--bulk-rows` users (autocommit, so with commit);
        `colliding`: 20 users to a username."""
        rows = self.args.bulk_rows
        with self.connect() as conn:
            began = time.perf_counter()
            if colliding:
                conn.execute(COLLIDING_BULK, (rows, rows))
            else:
                conn.execute(BULK, (rows,))
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
                run = self.signups(config, round_no)
                self.results.runs[config].append(run)
                self.verify(config, "signups")
                line = (
                    f"round {round_no + 1}/{self.args.rounds} {config:>12}: {run.tps:8.1f} tps,"
                    f" p50 {run.p50:6.2f} ms, p99 {run.p99:6.2f} ms"
                )
                if self.args.bulk_rows > 0:
                    self.reset()
                    seconds = self.bulk()
                    self.results.bulk[config].append(seconds)
                    self.verify(config, "bulk")
                    line += f", bulk {self.args.bulk_rows} rows {seconds:7.3f} s"
                    if config in COLLIDING_CONFIGS:
                        self.reset()
                        seconds = self.bulk(colliding=True)
                        self.results.colliding[config].append(seconds)
                        self.verify(config, "colliding bulk")
                        line += f", colliding {seconds:7.3f} s"
                log(line)
        self.configure("none")
        self.reset()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.results


# -- report ------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def summary(bench: Bench, args: argparse.Namespace, where: str) -> dict[str, Any]:
    res = bench.results
    configs: dict[str, dict[str, Any]] = {}
    for c in CONFIGS:
        runs = res.runs[c]
        configs[c] = {
            "tps": spread([r.tps for r in runs]),
            "p50_ms": spread([r.p50 for r in runs]),
            "p99_ms": spread([r.p99 for r in runs]),
            "bulk_seconds": spread(res.bulk[c]),
            "colliding_bulk_seconds": spread(res.colliding[c]),
            "failed_signups": sum(r.failed for r in runs),
        }
    for c in CONFIGS:
        base, this = configs["per-row"], configs[c]
        this["tps_vs_per_row"] = ratio(this["tps"]["median"], base["tps"]["median"])
        this["p99_vs_per_row"] = ratio(this["p99_ms"]["median"], base["p99_ms"]["median"])
        this["bulk_vs_per_row"] = ratio(
            this["bulk_seconds"]["median"], base["bulk_seconds"]["median"]
        )
        # Against the per-row trigger's bulk of unique names (its colliding bulk fails).
        this["colliding_bulk_vs_per_row"] = ratio(
            this["colliding_bulk_seconds"]["median"], base["bulk_seconds"]["median"]
        )
    checks: dict[str, dict[str, Any]] = {}
    for name in PROFILEGUARD_CONFIGS:
        pg = configs[name]
        check: dict[str, Any] = {
            "tps_ratio": pg["tps_vs_per_row"],
            "tps_target_min": TPS_TARGET,
            "p99_ratio": pg["p99_vs_per_row"],
            "p99_target_max": P99_TARGET,
            "bulk_ratio": pg["bulk_vs_per_row"],
            "bulk_target_max": BULK_TARGET,
        }
        if name in COLLIDING_CONFIGS:
            check["colliding_bulk_ratio"] = pg["colliding_bulk_vs_per_row"]
        check["met"] = all(
            v is not None and ok(v)
            for v, ok in (
                (check["tps_ratio"], lambda r: r >= TPS_TARGET),
                (check["p99_ratio"], lambda r: r <= P99_TARGET),
                (check["bulk_ratio"], lambda r: r <= BULK_TARGET),
                *(
                    [(check["colliding_bulk_ratio"], lambda r: r <= BULK_TARGET)]
                    if "colliding_bulk_ratio" in check
                    else []
                ),
            )
        )
        checks[name] = check
    described = {
        name: profileguard_settings(bench.url, name).describe() for name in PROFILEGUARD_CONFIGS
    }
    return {
        "database": where,
        "server": bench.server,
        "mappings": {name: d["mapping"] for name, d in described.items()},
        "username_columns": {name: d["username_column"] for name, d in described.items()},
        "clients": args.clients,
        "jobs": args.jobs,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "bulk_rows": args.bulk_rows,
        "configs": configs,
        "checks": checks,
        "warnings": res.warnings,
    }


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def fmt_spread(s: dict[str, float | None], spec: str) -> str:
    return f"{fmt(s['median'], spec)} [{fmt(s['min'], spec)}-{fmt(s['max'], spec)}]"


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
        f"pgbench, Supabase Auth-shaped signups (insert user as supabase_auth_admin, update role, "
        f"insert identity): {report['clients']} clients, {report['jobs']} threads, "
        f"{report['seconds']:g} s per run (+{report['warmup']:g} s warm-up), "
        f"{report['rounds']} interleaved rounds; bulk {report['bulk_rows']} rows; "
        "median [min-max] over rounds"
    )
    for name in PROFILEGUARD_CONFIGS:
        mapping = ", ".join(
            f"{col} <- {' | '.join(srcs)}" for col, srcs in report["mappings"][name].items()
        )
        print(
            f"{name} mapping: {mapping}; collision-safe username column: "
            f"{report['username_columns'][name]}"
        )
    print()
    vs = f"{TIMES} per-row"
    header = (
        f"{'config':<13}{'TPS':>24}{vs:>10}{'p50 ms':>9}{'p99 ms':>22}{vs:>10}"
        f"{'bulk s':>24}{vs:>10}{'colliding s':>24}{vs:>10}"
    )
    print(header)
    print("-" * len(header))
    for name, c in report["configs"].items():
        print(
            f"{name:<13}{fmt_spread(c['tps'], '.0f'):>24}{fmt(c['tps_vs_per_row'], '.3f'):>10}"
            f"{fmt(c['p50_ms']['median'], '.2f'):>9}{fmt_spread(c['p99_ms'], '.2f'):>22}"
            f"{fmt(c['p99_vs_per_row'], '.3f'):>10}"
            f"{fmt_spread(c['bulk_seconds'], '.3f'):>24}{fmt(c['bulk_vs_per_row'], '.3f'):>10}"
            f"{fmt_spread(c['colliding_bulk_seconds'], '.3f'):>24}"
            f"{fmt(c['colliding_bulk_vs_per_row'], '.3f'):>10}"
        )
    print()
    for name, checks in report["checks"].items():
        print(
            f"{name}: TPS = {fmt(checks['tps_ratio'], '.3f', TIMES)} per-row "
            f"(target ≥ {TPS_TARGET:.2f}); p99 = {fmt(checks['p99_ratio'], '.3f', TIMES)} "
            f"(target ≤ {P99_TARGET:.2f}); bulk time = "
            f"{fmt(checks['bulk_ratio'], '.3f', TIMES)} (target ≤ {BULK_TARGET:.2f})"
            + (
                f"; colliding bulk = {fmt(checks['colliding_bulk_ratio'], '.3f', TIMES)} the "
                f"per-row bulk of unique names (target ≤ {BULK_TARGET:.2f})"
                if "colliding_bulk_ratio" in checks
                else ""
            )
            + ": "
            f"{'met' if checks['met'] else 'NOT met'}"
        )
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Signup TPS, latency and bulk insert time under pgbench: no trigger, the "
        "per-row handle_new_user trigger and profileguard's statement-level trigger."
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help=f"server to use (a scratch database {SCRATCH_DB} is created and dropped); "
        "default: $DATABASE_URL, else an embedded PostgreSQL",
    )
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--jobs", type=int, default=2, help="pgbench threads")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--bulk-rows", type=int, default=100_000, help="rows of the bulk insert")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    positive: dict[str, Callable[[Any], bool]] = {
        "clients": lambda v: v >= 1,
        "jobs": lambda v: v >= 1,
        "seconds": lambda v: v >= 1,
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

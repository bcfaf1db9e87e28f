"""Signups while a migration holds the profile table: none blocked, none failed, all repaired.

For each scenario it holds ACCESS EXCLUSIVE on the profile table (and, in the second, on
profileguard's events table too) for ``--hold`` seconds, starts ``--signups`` concurrent Supabase
Auth-shaped signups (as ``supabase_auth_admin``: insert the user, update its role, insert its
identity, commit) one second into the hold, with a ``profileguard worker`` process running. It
prints how many committed, the slowest signup against the trigger's lock budget
(``lock_timeout_ms``, a budget per lock wait) + 100 ms, and the time from the lock's release until
every one of those users has a profile (target ≤ 2 s). It names the server and its ``jit``.
It is a measurement, not a test: it exits 0 whatever the figures are.

Run::

    .venv/bin/python bench/signup_locks.py                     # embedded PostgreSQL
    .venv/bin/python bench/signup_locks.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from benchdb import database, log
from psycopg.conninfo import make_conninfo

from profileguard import sql as sqlfiles
from profileguard.config import load_settings
from profileguard.install import RECORD_LOCK_MS, install

SCRATCH_DB = "profileguard_bench_locks"
SCENARIOS = {
    "profile table locked": ("public.profiles",),
    "profile and events tables locked": ("public.profiles", "profileguard.events"),
}
REPAIR_TARGET = 2.0
MARGIN = 0.100


def signup(url: str, tag: str) -> tuple[uuid.UUID, float, str | None]:
    """One Supabase Auth-shaped signup on a fresh connection: (user id, seconds, error)."""
    user = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        began = time.perf_counter()
        try:
            with conn.transaction():
                conn.execute(
                    "insert into users (id, aud, role, email, raw_app_meta_data,"
                    " raw_user_meta_data, created_at, updated_at)"
                    " values (%s, 'authenticated', '', %s, '{\"provider\": \"email\"}',"
                    " %s, now(), now())",
                    (
                        user,
                        f"{tag}@bench.example",
                        json.dumps({"full_name": f"Locked {tag}", "user_name": tag}),
                    ),
                )
                conn.execute("update users set role = 'authenticated' where id = %s", (user,))
                conn.execute(
                    "insert into identities (provider_id, user_id, identity_data, provider,"
                    " created_at, updated_at) values (%s, %s, '{}', 'email', now(), now())",
                    (str(user), user),
                )
        except psycopg.Error as exc:
            return user, time.perf_counter() - began, f"{exc.sqlstate}: {exc}"
        return user, time.perf_counter() - began, None


def scenario(
    url: str, auth_url: str, tables: tuple[str, ...], args: argparse.Namespace
) -> dict[str, Any]:
    released = threading.Event()
    release_at: list[float] = []
    holding = threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as conn:
            for table in tables:
                conn.execute(f"lock table {table} in access exclusive mode")
            holding.set()
            time.sleep(args.hold)
            conn.rollback()
            release_at.append(time.perf_counter())
            released.set()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(30)
    time.sleep(1.0)
    tag = uuid.uuid4().hex[:6]
    with ThreadPoolExecutor(args.signups) as pool:
        results = list(pool.map(lambda i: signup(auth_url, f"{tag}n{i}"), range(args.signups)))
    finished_during_hold = not released.is_set()
    users = [r[0] for r in results if r[2] is None]
    released.wait()
    holder.join()
    repaired_after: float | None = None
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = release_at[0] + 60
        while time.perf_counter() < deadline:
            row = conn.execute(
                "select count(*) from unnest(%s::uuid[]) u(id)"
                " where not exists (select from public.profiles p where p.id = u.id)",
                (users,),
            ).fetchone()
            if row and row[0] == 0:
                repaired_after = time.perf_counter() - release_at[0]
                break
            time.sleep(0.01)
    return {
        "tables": list(tables),
        "signups": args.signups,
        "committed": len(users),
        "errors": [r[2] for r in results if r[2]],
        "slowest_ms": max(r[1] for r in results) * 1000,
        "committed_while_locked": finished_during_hold,
        "repaired_seconds_after_release": repaired_after,
    }


def run(url: str, where: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(env={}, database_url=url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
        server = {
            name: str(conn.execute(f"show {name}").fetchone()[0])  # type: ignore[index]
            for name in ("server_version", "jit")
        }
        available = conn.execute("select pg_jit_available()").fetchone()
        server["jit_available"] = "yes" if available and available[0] else "no"
    install(settings, create_profile_table=True)
    auth_url = make_conninfo(url, user="supabase_auth_admin", options="-c search_path=auth")
    env = {**os.environ, "DATABASE_URL": url}
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "profileguard"), "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)  # the worker connects and listens
        figures = {
            name: scenario(url, auth_url, tables, args) for name, tables in SCENARIOS.items()
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    return {
        "database": where,
        "server": server,
        "lock_timeout_ms": settings.lock_timeout_ms,
        "record_lock_ms": RECORD_LOCK_MS,
        "hold_seconds": args.hold,
        "scenarios": figures,
    }


def print_report(report: dict[str, Any]) -> None:
    server = report["server"]
    budget = report["lock_timeout_ms"]
    print(
        f"PostgreSQL {server['server_version']} ({report['database']}); jit={server['jit']} "
        f"(available: {server['jit_available']})"
    )
    print(
        f"ACCESS EXCLUSIVE held {report['hold_seconds']:g} s; signup trigger lock budget "
        f"{budget} ms per lock wait ({report['record_lock_ms']} ms more to record a failure); "
        "a profileguard worker running"
    )
    print()
    for name, s in report["scenarios"].items():
        # One lock wait on the profile table, one more on the events table when it is locked too.
        limit = budget + (report["record_lock_ms"] if len(s["tables"]) > 1 else 0) + MARGIN * 1000
        repaired = s["repaired_seconds_after_release"]
        print(f"{name}:")
        print(
            f"  committed {s['committed']}/{s['signups']} (all while the lock was held: "
            f"{'yes' if s['committed_while_locked'] else 'NO'})"
        )
        print(
            f"  slowest signup {s['slowest_ms']:.0f} ms (target ≤ {limit:.0f} ms: "
            f"{'met' if s['slowest_ms'] <= limit else 'NOT met'})"
        )
        print(
            "  every profile present "
            + ("never (60 s)" if repaired is None else f"{repaired:.2f} s after the release")
            + f" (target ≤ {REPAIR_TARGET:g} s: "
            + ("met" if repaired is not None and repaired <= REPAIR_TARGET else "NOT met")
            + ")"
        )
        for error in s["errors"][:3]:
            print(f"  error: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help=f"server to use (a scratch database {SCRATCH_DB} is created and "
        "dropped); default: $DATABASE_URL, else an embedded PostgreSQL",
    )
    parser.add_argument("--signups", type=int, default=20, help="concurrent signups")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the lock is held")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.signups < 1 or args.hold < 2:
        parser.error("--signups must be at least 1 and --hold at least 2 seconds")
    with database(args.database_url, SCRATCH_DB) as (url, where):
        report = run(url, where, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    log("signups under a locked profile table…")
    sys.exit(main())

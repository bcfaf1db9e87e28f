"""Signups while a migration holds the profile table: none blocked, none failed, all repaired.

For each scenario it holds ACCESS EXCLUSIVE on the profile table (and, in the second, on
profileguard's events table too) for ``--hold`` seconds, starts ``--signups`` concurrent Supabase
Auth-shaped signups (as ``supabase_auth_admin``: insert the user, update its role, insert its
identity, commit) one second into the hold, with a ``profileguard worker`` process running. It
prints how many committed, the slowest signup against the trigger's lock budget
(``lock_timeout_ms``, the budget of all a sign-up's lock waits) + 100 ms, and the time from the
lock's release until every one of those users has a profile (target ≤ 2 s). Then, with a unique
index on ``avatar_url`` added, sign-ups whose username and avatar are both held by in-flight
sign-ups (two lock waits), against the stated bound (``LockBudget.bound_ms``: the sign-up's
budget plus the failure path's, whatever the number of waits). Last, metadata updates of users
whose ``full_name`` follows while profileguard's tables (then the profile table too) are locked:
the slowest update, profiles in step while locked, and after the release. It names the server
and its ``jit``.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from benchdb import database, log
from psycopg.conninfo import make_conninfo

from profileguard import sql as sqlfiles
from profileguard.config import load_settings
from profileguard.install import RECORD_LOCK_MS, install
from profileguard.mapping import build_plan

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
        waits = two_waits(url, auth_url, settings, args)
        updates = locked_updates(url, auth_url, settings)
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
        "two_waits": waits,
        "updates": updates,
    }


UPDATE_CASES = {
    "events table locked": ("profileguard.events",),
    "every profileguard table locked": ("profileguard.*",),
    "profile and events tables locked": ("public.profiles", "profileguard.events"),
}
UPDATED_USERS = 5


def locked_updates(url: str, auth_url: str, settings: Any) -> dict[str, Any]:
    """Metadata updates (a social login) of users whose full_name follows their metadata, while
    profileguard's tables (and in the last case the profile table) are locked: the slowest
    update, how many profiles were in step while the lock was still held, and how long after
    the release every one was (the worker told by the trigger's notification)."""
    install(replace(settings, sync_policies={"full_name": "follow"}))
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "select format('%I.%I', schemaname, tablename) from pg_tables"
                " where schemaname = 'profileguard' order by 1"
            ).fetchall()
        ]
    figures: dict[str, Any] = {}
    for case, locked in UPDATE_CASES.items():
        users = [uuid.uuid4() for _ in range(UPDATED_USERS)]
        with psycopg.connect(auth_url, autocommit=True) as conn:
            for i, user in enumerate(users):
                conn.execute(
                    "insert into users (id, aud, role, email, raw_user_meta_data, created_at,"
                    " updated_at) values (%s, 'authenticated', 'authenticated', %s, %s, now(),"
                    " now())",
                    (user, f"{user}@bench.example", json.dumps({"full_name": f"Before {i}"})),
                )
        expected = [f"After {i}" for i in range(UPDATED_USERS)]

        def in_step(conn: psycopg.Connection, users: list[uuid.UUID] = users) -> int:
            row = conn.execute(
                "select count(*) from unnest(%s::uuid[]) with ordinality u(id, n)"
                " join public.profiles p on p.id = u.id"
                " where p.full_name = 'After ' || (u.n - 1)",
                (users,),
            ).fetchone()
            return int(row[0]) if row else 0

        times: list[float] = []
        synced_while_locked: int | None = None
        with psycopg.connect(url) as holder:
            for table in locked:
                for name in tables if table == "profileguard.*" else [table]:
                    holder.execute(f"lock table {name} in access exclusive mode")
            with psycopg.connect(auth_url, autocommit=True) as conn:
                for i, user in enumerate(users):
                    began = time.perf_counter()
                    conn.execute(
                        "update users set raw_user_meta_data = %s where id = %s",
                        (json.dumps({"full_name": expected[i]}), user),
                    )
                    times.append((time.perf_counter() - began) * 1000)
            if "public.profiles" not in locked:
                with psycopg.connect(url, autocommit=True) as reader:
                    synced_while_locked = in_step(reader)
            holder.rollback()
            released = time.perf_counter()
        after: float | None = None
        with psycopg.connect(url, autocommit=True) as reader:
            while time.perf_counter() < released + 60:
                if in_step(reader) == UPDATED_USERS:
                    after = time.perf_counter() - released
                    break
                time.sleep(0.01)
        figures[case] = {
            "updates": UPDATED_USERS,
            "slowest_ms": max(times),
            "synced_while_locked": synced_while_locked,
            "in_step_seconds_after_release": after,
        }
    return figures


def github_signup(
    auth_url: str,
    name: str,
    avatar: str,
    hold: threading.Event | None = None,
    conn: psycopg.Connection | None = None,
) -> tuple[float, str | None]:
    """A GitHub sign-up (its user_name kept as the username), on `conn` or a new connection;
    with `hold`, it inserts, then waits for the event and rolls back: an in-flight sign-up
    holding its name and avatar."""
    user = uuid.uuid4()
    own = conn is None
    conn = conn or psycopg.connect(auth_url)
    began = time.perf_counter()
    try:
        conn.execute(
            "insert into users (id, aud, role, email, raw_app_meta_data, raw_user_meta_data,"
            " created_at, updated_at)"
            " values (%s, 'authenticated', '', %s, '{\"provider\": \"github\"}', %s, now(),"
            " now())",
            (user, f"{user}@bench.example", json.dumps({"user_name": name, "avatar_url": avatar})),
        )
        conn.execute("update users set role = 'authenticated' where id = %s", (user,))
        if hold is not None:
            hold.wait(60)
            conn.rollback()
            return time.perf_counter() - began, None
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        return time.perf_counter() - began, f"{exc.sqlstate}: {exc}"
    finally:
        if own:
            conn.close()
    return time.perf_counter() - began, None


def two_waits(url: str, auth_url: str, settings: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A sign-up whose username and avatar (a unique index) are both held by in-flight sign-ups:
    held throughout (the first wait times out), and the username released just before its wait
    times out (the sign-up then waits on the avatar too, the longest it can)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "create unique index if not exists profiles_avatar_url_key"
            " on public.profiles (avatar_url)"
        )
    install(settings)  # the per-wait timeout is chosen for the indexes the table has now
    with psycopg.connect(url) as conn:
        plan = build_plan(conn, settings)
    budget = plan.guards.budget(settings.lock_timeout_ms)
    figures: dict[str, Any] = {
        "unique_indexes": budget.indexes,
        "per_wait_ms": budget.per_wait_ms,
        "record_per_wait_ms": budget.record_per_wait_ms,
        "bound_ms": budget.bound_ms,
    }
    for case, release_after in (
        ("nothing held (baseline)", -1.0),
        ("both held", None),
        ("username released just before its timeout", 0.9 * budget.per_wait_ms / 1000),
    ):
        times: list[float] = []
        errors: list[str] = []
        # One connection for every timed sign-up, as Supabase Auth's pooled ones: the first
        # round makes the trigger's plans (its failure path's too) and is not counted.
        timed_conn = psycopg.connect(auth_url)
        for round_ in range(args.rounds + 1):
            tag = uuid.uuid4().hex[:8]
            name, avatar = f"name{tag}", f"https://a.example/{tag}.png"
            name_held, avatar_held = threading.Event(), threading.Event()
            with ThreadPoolExecutor(3) as pool:
                holders = [
                    pool.submit(
                        github_signup, auth_url, name, f"https://a.example/o{tag}", name_held
                    ),
                    pool.submit(github_signup, auth_url, f"other{tag}", avatar, avatar_held),
                ]
                time.sleep(0.2)  # both holders have inserted their profiles
                if release_after is not None and release_after < 0:
                    name, avatar = f"free{tag}", f"https://a.example/free{tag}.png"
                timed = pool.submit(github_signup, auth_url, name, avatar, None, timed_conn)
                if release_after is not None and release_after >= 0:
                    time.sleep(release_after)
                    name_held.set()
                seconds, error = timed.result(60)
                name_held.set()
                avatar_held.set()
                for holder in holders:
                    holder.result(60)
            if round_ == 0:
                continue
            times.append(seconds * 1000)
            if error:
                errors.append(error)
        timed_conn.close()
        figures[case] = {
            "rounds": args.rounds,
            "slowest_ms": max(times),
            "median_ms": sorted(times)[len(times) // 2],
            "errors": errors,
        }
    return figures


def print_report(report: dict[str, Any]) -> None:
    server = report["server"]
    budget = report["lock_timeout_ms"]
    print(
        f"PostgreSQL {server['server_version']} ({report['database']}); jit={server['jit']} "
        f"(available: {server['jit_available']})"
    )
    print(
        f"ACCESS EXCLUSIVE held {report['hold_seconds']:g} s; signup trigger lock budget "
        f"{budget} ms for all its lock waits ({report['record_lock_ms']} ms more to record a "
        "failure); "
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
    waits = report["two_waits"]
    print()
    print(
        f"two lock waits (a username and a unique avatar held by in-flight sign-ups): "
        f"{waits['unique_indexes']} unique indexes, {waits['per_wait_ms']} ms per wait, "
        f"{waits['record_per_wait_ms']} ms per wait to record; stated bound "
        f"{waits['bound_ms']} ms"
    )
    for case in (
        "nothing held (baseline)",
        "both held",
        "username released just before its timeout",
    ):
        w = waits[case]
        print(
            f"  {case}: slowest {w['slowest_ms']:.0f} ms, median {w['median_ms']:.0f} ms over "
            f"{w['rounds']} sign-ups (≤ {waits['bound_ms']} ms: "
            f"{'met' if w['slowest_ms'] <= waits['bound_ms'] else 'NOT met'}); "
            f"{len(w['errors'])} failed"
        )


def print_updates(report: dict[str, Any]) -> None:
    print()
    print(
        f"metadata updates ({UPDATED_USERS} users whose full_name follows), a worker running; "
        f"target: no update slower than the sign-up budget "
        f"({report['lock_timeout_ms'] + report['record_lock_ms']} ms), every profile in step "
        "≤ 5 s after the release"
    )
    for case, u in report["updates"].items():
        after = u["in_step_seconds_after_release"]
        held = u["synced_while_locked"]
        print(
            f"  {case}: slowest update {u['slowest_ms']:.0f} ms; "
            + ("" if held is None else f"{held}/{u['updates']} in step while locked; ")
            + ("never in step (60 s)" if after is None else f"all in step {after:.2f} s after")
        )


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
    parser.add_argument("--rounds", type=int, default=10, help="sign-ups with two lock waits")
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
        print_updates(report)
    return 0


if __name__ == "__main__":
    log("signups under a locked profile table…")
    sys.exit(main())

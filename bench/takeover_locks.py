"""How long a login waits while profileguard takes over from a legacy trigger, and while it is
uninstalled, with sign-ups and logins flowing and a long transaction in the way.

Setup: a scratch database with the Supabase-shaped auth schema, `--users` users, the documented
`handle_new_user` trigger, and the role shaped like hosted Supabase's `postgres` (not superuser,
not owner of auth.users) that profileguard runs as. Then, for each of `install --replace-trigger
on_auth_user_created` and `uninstall`:

* `--logins` connections each run `update auth.users set last_sign_in_at = now()` on random users
  in a loop (autocommit, as Supabase Auth does at every sign-in), one connection signs users up;
* a long transaction updates one user and stays open `--hold` seconds: its ROW EXCLUSIVE lock on
  auth.users conflicts with the trigger DDL (and with the schema drop), so the DDL must give way
  (lock_timeout) and retry, or every login would queue behind it for the whole hold;
* the command runs meanwhile; the longest login wait while it runs is the figure (target
  <= 200 ms), beside the same figure in a window with the long transaction but no DDL, and the
  same commands run with no lock_timeout (what one long install transaction does).

It is a measurement, not a test: it exits 0 whatever the figures are.

Run::

    .venv/bin/python bench/takeover_locks.py                 # embedded PostgreSQL
    .venv/bin/python bench/takeover_locks.py --dsn postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdb import database, log

from profileguard import sql as sqlfiles
from profileguard.config import load_settings
from profileguard.install import install, locking, uninstall
from profileguard.install.locking import DDL_LOCK_TIMEOUT_MS

ROLE = "profileguard_supabase_postgres"
TARGET_MS = 200.0
LEGACY = """
create table public.profiles (
  id uuid not null references auth.users on delete cascade primary key,
  full_name text
);
alter table public.profiles enable row level security;
create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into public.profiles (id, full_name)
  values (new.id, new.raw_user_meta_data ->> 'full_name');
  return new;
end;
$$;
create trigger on_auth_user_created after insert on auth.users
  for each row execute procedure public.handle_new_user();
"""


class Load:
    """Logins and sign-ups in threads; every login's start time and duration is kept."""

    def __init__(self, admin_url: str, ids: list[uuid.UUID], logins: int):
        self.admin_url = admin_url
        self.ids = ids
        self.logins = logins
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self.lock = threading.Lock()
        self.signups = 0
        self.failed_signups = 0
        self.threads: list[threading.Thread] = []

    def _login(self, seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("set role supabase_auth_admin")
            while not self.stop.is_set():
                uid = rng.choice(self.ids)
                start = time.perf_counter()
                conn.execute("update auth.users set last_sign_in_at = now() where id = %s", (uid,))
                took = time.perf_counter() - start
                with self.lock:
                    self.samples.append((start, took))
                time.sleep(0.002)

    def _signup(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("set role supabase_auth_admin")
            conn.execute("set search_path = auth")
            while not self.stop.is_set():
                uid = uuid.uuid4()
                try:
                    with conn.transaction():
                        conn.execute(
                            "insert into users (id, aud, role, email, raw_user_meta_data)"
                            " values (%s, 'authenticated', '', %s, %s)",
                            (uid, f"{uid}@bench.example", json.dumps({"full_name": "Bench"})),
                        )
                        conn.execute(
                            "update users set role = 'authenticated' where id = %s", (uid,)
                        )
                    self.signups += 1
                except psycopg.Error as exc:  # a failed sign-up is a finding: count it
                    self.failed_signups += 1
                    log(f"sign-up failed: {exc.sqlstate} {exc}")
                time.sleep(0.005)

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self._login, args=(n,), daemon=True) for n in range(self.logins)
        ]
        self.threads.append(threading.Thread(target=self._signup, daemon=True))
        for thread in self.threads:
            thread.start()
        time.sleep(1.0)  # warm up
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def waits(self, start: float, end: float) -> list[float]:
        """Durations (ms) of the logins that were running at some moment in [start, end]."""
        with self.lock:
            return [
                took * 1000
                for began, took in self.samples
                if began <= end and began + took >= start
            ]


def hold_lock(admin_url: str, user: uuid.UUID, seconds: float, held: threading.Event) -> None:
    """A long transaction: one UPDATE on auth.users (ROW EXCLUSIVE), kept open `seconds`."""
    with psycopg.connect(admin_url) as conn:
        conn.execute("update auth.users set last_sign_in_at = now() where id = %s", (user,))
        held.set()
        time.sleep(seconds)
        conn.commit()


def measure(
    load: Load, admin_url: str, blocker: uuid.UUID, hold: float, action: Callable[[], object] | None
) -> tuple[list[float], float]:
    """Run `action` (or just wait) while a long transaction holds its lock; returns the login
    waits during it and how long it took."""
    held = threading.Event()
    thread = threading.Thread(target=hold_lock, args=(admin_url, blocker, hold, held))
    thread.start()
    held.wait(10)
    time.sleep(0.3)
    start = time.perf_counter()
    if action is None:
        time.sleep(hold)
    else:
        action()
    end = time.perf_counter()
    thread.join()
    time.sleep(0.3)
    return load.waits(start, end), end - start


def summary(name: str, waits: list[float], took: float) -> str:
    if not waits:
        return f"{name:<34} no logins measured"
    p99 = statistics.quantiles(waits, n=100)[98] if len(waits) >= 100 else max(waits)
    verdict = "ok" if max(waits) <= TARGET_MS else "OVER TARGET"
    return (
        f"{name:<34} {took:6.2f} s  {len(waits):6d} logins  median "
        f"{statistics.median(waits):6.1f} ms  p99 {p99:6.1f} ms  max {max(waits):7.1f} ms"
        f"  [{verdict}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dsn",
        "--database-url",
        dest="dsn",
        help="a server to create a scratch database on (default: an embedded PostgreSQL)",
    )
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--logins", type=int, default=4, help="login connections")
    parser.add_argument(
        "--hold", type=float, default=3.0, help="seconds the long transaction stays open"
    )
    args = parser.parse_args()

    with database(args.dsn, "pg_bench_takeover_locks") as (url, where):
        with psycopg.connect(url, autocommit=True) as admin:
            version = admin.execute("show server_version").fetchone()
            jit = admin.execute(
                "select current_setting('jit') || case when pg_jit_available() then ''"
                " else ' (not available: built without LLVM)' end"
            ).fetchone()
            dbname = admin.execute("select current_database()").fetchone()
            admin.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
            admin.execute(
                sql.SQL(sqlfiles.read("fixtures/supabase_postgres_role.sql")).format(
                    role=sql.Identifier(ROLE), role_name=sql.Literal(ROLE)
                )
            )
            assert dbname is not None
            admin.execute(
                sql.SQL("alter database {} owner to {}").format(
                    sql.Identifier(dbname[0]), sql.Identifier(ROLE)
                )
            )
        role_url = make_conninfo(url, user=ROLE)
        with psycopg.connect(role_url, autocommit=True) as conn:
            conn.execute(LEGACY)
        with psycopg.connect(url, autocommit=True) as admin:
            log(f"seeding {args.users} users…")
            admin.execute(
                "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
                " select gen_random_uuid(), 'authenticated', 'authenticated',"
                " 'seed' || g || '@bench.example', '{}', now() from generate_series(1, %s) g",
                (args.users,),
            )
            admin.execute("vacuum analyze auth.users")
            ids = [r[0] for r in admin.execute("select id from auth.users").fetchall()]
        blocker = ids.pop()
        settings = load_settings(env={}, database_url=role_url)

        print(
            f"server: PostgreSQL {version[0] if version else '?'} ({where}), "
            f"jit = {jit[0] if jit else '?'}; profileguard runs as {ROLE} (not superuser, "
            "not owner of auth.users)"
        )
        print(
            f"lock_timeout per attempt {DDL_LOCK_TIMEOUT_MS} ms; a long transaction holds "
            f"ROW EXCLUSIVE on auth.users for {args.hold:.1f} s during each command; "
            f"{args.logins} login connections + 1 sign-up connection; target: longest login "
            f"wait <= {TARGET_MS:.0f} ms"
        )
        with Load(url, ids, args.logins) as load:
            waits, took = measure(load, url, blocker, args.hold, None)
            print(summary("long transaction, no DDL", waits, took))
            waits, took = measure(
                load,
                url,
                blocker,
                args.hold,
                lambda: install(settings, replace_triggers=["on_auth_user_created"]),
            )
            print(summary("install --replace-trigger", waits, took))
            notes: list[str] = []
            waits, took = measure(
                load, url, blocker, args.hold, lambda: uninstall(settings, notes=notes)
            )
            print(summary("uninstall", waits, took))
            # Side by side: the same two commands with no lock_timeout (each waits as long as
            # the long transaction holds its lock, and every login queues behind it).
            locking.DDL_LOCK_TIMEOUT_MS = 0
            waits, took = measure(
                load,
                url,
                blocker,
                args.hold,
                lambda: install(settings, replace_triggers=["on_auth_user_created"]),
            )
            print(summary("install, no lock_timeout", waits, took))
            waits, took = measure(load, url, blocker, args.hold, lambda: uninstall(settings))
            print(summary("uninstall, no lock_timeout", waits, took))
        print(
            f"sign-ups during the run: {load.signups}, failed: {load.failed_signups}; all of "
            f"them with a profile: {_all_profiled(url)}"
        )


def _all_profiled(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from auth.users u where u.email not like 'seed%%'"
            " and not exists (select from public.profiles p where p.id = u.id)"
        ).fetchone()
    return bool(row and row[0] == 0)


if __name__ == "__main__":
    main()

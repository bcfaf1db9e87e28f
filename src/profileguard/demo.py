"""`profileguard demo`: profileguard on a Supabase-shaped database, with a fault injected.

It starts an embedded PostgreSQL (or uses a scratch database on --database-url), creates
auth.users as Supabase does, installs profileguard, adds an application rule that some sign-ups
violate (full_name required: magic-link and anonymous users have none), signs users up the way
Supabase Auth does, and shows that every sign-up committed and every failure was recorded. Then
it fixes the cause and repairs the users that were left without a profile.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.table import Table

from profileguard import schema
from profileguard import sql as sqlfiles
from profileguard.client import ProfileGuard
from profileguard.config import Settings
from profileguard.embedded import EmbeddedPostgres

DEMO_DATABASE = "profileguard_demo"
FAULT = (
    "alter table public.profiles add constraint profiles_full_name_required"
    " check (full_name is not null)"
)
FIRST = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Edsger"]
LAST = ["Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen"]


def fake_signup(rng: random.Random, n: int) -> tuple[str | None, dict[str, Any], bool]:
    """(email, raw_user_meta_data, is_anonymous) shaped like a real provider's sign-up."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    name = f"{first} {last}"
    handle = f"{first.lower()}{rng.randint(1, 40)}"
    kind = rng.choices(
        ["google", "github", "discord", "email", "magic_link", "anonymous"],
        weights=[30, 25, 10, 20, 10, 5],
    )[0]
    email = f"{first.lower()}.{last.lower()}{n}@example.com"
    if kind == "google":
        return email, {"full_name": name, "name": name, "picture": f"https://img/{n}.png",
                       "email": email, "email_verified": True}, False
    if kind == "github":
        return email, {"user_name": handle, "preferred_username": handle, "full_name": name,
                       "avatar_url": f"https://avatars/{n}"}, False
    if kind == "discord":
        return email, {"full_name": handle, "custom_claims": {"global_name": name},
                       "avatar_url": f"https://cdn/{n}.png"}, False
    if kind == "email":
        return email, {"full_name": name}, False
    if kind == "magic_link":
        return email, {}, False
    return None, {}, True


def supabase_signup(conn: psycopg.Connection, email: str | None, meta: dict[str, Any],
                    anonymous: bool) -> uuid.UUID:
    """One sign-up as Supabase Auth makes it: one transaction, role set after the insert."""
    uid = uuid.uuid4()
    with conn.transaction():
        conn.execute(
            "insert into auth.users (instance_id, id, aud, role, email, raw_user_meta_data,"
            " raw_app_meta_data, is_anonymous, created_at, updated_at)"
            " values ('00000000-0000-0000-0000-000000000000', %s, 'authenticated', '', %s, %s,"
            " '{\"provider\": \"email\"}', %s, now(), now())",
            (uid, email, json.dumps(meta), anonymous),
        )
        conn.execute("update auth.users set role = 'authenticated' where id = %s", (uid,))
        if email:
            conn.execute(
                "insert into auth.identities (provider_id, user_id, identity_data, provider,"
                " created_at) values (%s, %s, %s, 'email', now())",
                (str(uid), uid, json.dumps({"sub": str(uid), "email": email})),
            )
    return uid


@contextmanager
def demo_database(database_url: str | None) -> Iterator[str]:
    """An embedded server, or a fresh scratch database on the given server."""
    if database_url is None:
        with EmbeddedPostgres() as server:
            yield server.uri()
        return
    drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DEMO_DATABASE))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(DEMO_DATABASE)))
    try:
        yield make_conninfo(database_url, dbname=DEMO_DATABASE)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(drop)


def counts(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(
        "select (select count(*) from auth.users),"
        " (select count(*) from public.profiles),"
        " (select count(*) from auth.users u where not exists"
        "   (select from public.profiles p where p.id = u.id)),"
        " (select count(*) from profileguard.failures),"
        " (select count(*) from profileguard.events where kind = 'repair')"
    ).fetchone()
    assert row is not None
    keys = ("users", "profiles", "missing profiles", "failures recorded", "repairs")
    return dict(zip(keys, (int(v) for v in row), strict=True))


def run_signups(url: str, total: int, clients: int = 4) -> tuple[int, list[str]]:
    """Sign `total` users up from `clients` threads; returns (committed, errors)."""
    committed = 0
    errors: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        nonlocal committed
        rng = random.Random(index)
        with psycopg.connect(url, autocommit=True, options="-c search_path=auth") as conn:
            conn.execute("set role supabase_auth_admin")
            for n in range(index, total, clients):
                try:
                    supabase_signup(conn, *fake_signup(rng, n))
                    with lock:
                        committed += 1
                except psycopg.Error as exc:
                    with lock:
                        errors.append(f"{exc.sqlstate}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return committed, errors


def run_demo(console: Console, *, database_url: str | None = None, signups: int = 300) -> None:
    started = time.monotonic()
    console.rule("[bold]profileguard demo")
    where = "an embedded PostgreSQL" if database_url is None else f"database {DEMO_DATABASE}"
    console.print(f"Starting {where}…")
    with demo_database(database_url) as url, psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("show server_version").fetchone()
        console.print(f"PostgreSQL {version[0] if version else '?'} is up.")
        conn.execute(sqlfiles.read("supabase_auth.sql"))
        console.print("Created a Supabase-shaped auth schema (auth.users, roles).")
        settings = Settings(database_url=url)
        schema.install(settings, create_profile_table=True)
        console.print("[green]profileguard install --create-profile-table[/]: trigger on "
                      "auth.users, public.profiles with RLS.")
        conn.execute(FAULT)
        console.print("[yellow]Injected fault[/]: profiles.full_name is now required — "
                      "magic-link and anonymous sign-ups carry no name.")

        console.print(f"\nSigning up {signups} users as supabase_auth_admin (4 clients)…")
        committed, errors = run_signups(url, signups)
        before = counts(conn)
        table = Table(title="After the sign-ups", title_justify="left")
        table.add_column("")
        table.add_column("count", justify="right")
        table.add_row("sign-ups attempted", str(signups))
        table.add_row("sign-ups committed", f"[bold green]{committed}[/]")
        table.add_row("sign-ups failed", f"[bold]{len(errors)}[/]")
        for key, value in before.items():
            table.add_row(key, str(value))
        console.print(table)

        failures = Table(title="Failures recorded by the trigger", title_justify="left")
        for column in ("sqlstate", "category", "users", "message"):
            failures.add_column(column)
        for row in conn.execute(
            "select sqlstate, category, count(*), min(message) from profileguard.failures"
            " group by 1, 2 order by 3 desc"
        ):
            failures.add_row(row[0], row[1], str(row[2]), row[3])
        console.print(failures)
        console.print(
            f"[bold]{before['failures recorded']} sign-ups hit the fault and still committed"
            "[/]; each failure is recorded with its SQLSTATE."
        )
        suffixed = conn.execute(
            "select count(*) from public.profiles where username ~ '_[0-9a-f]{8}$'"
        ).fetchone()
        console.print(f"{suffixed[0] if suffixed else 0} colliding usernames got a "
                      "deterministic suffix instead of failing.")

        console.print("\nFixing the cause (dropping the rule) and repairing the users left "
                      "without a profile with ensure()…")
        conn.execute("alter table public.profiles drop constraint profiles_full_name_required")
        missing = [r[0] for r in conn.execute(
            "select u.id from auth.users u where not exists"
            " (select from public.profiles p where p.id = u.id)"
        )]
        with ProfileGuard(settings, max_size=2, source="demo") as guard:
            for user_id in missing:
                guard.ensure(user_id)
        after = counts(conn)
        final = Table(title="Before and after repair", title_justify="left")
        final.add_column("")
        final.add_column("after sign-ups", justify="right")
        final.add_column("after repair", justify="right")
        for key in after:
            final.add_row(key, str(before[key]), str(after[key]))
        final.add_row("failed sign-ups", str(len(errors)), str(len(errors)))
        console.print(final)
        console.print(f"Done in {time.monotonic() - started:.1f} s.")

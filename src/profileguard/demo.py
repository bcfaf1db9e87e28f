"""`profileguard demo`: a Supabase app with the usual profile trigger, before and with profileguard.

On an embedded PostgreSQL (or a scratch database on --database-url) it builds what many apps
have: `auth.users` as Supabase Auth fills it, the "User Management Starter" `public.profiles`
(username unique, at least 3 characters) and the documented per-row `handle_new_user` trigger,
with existing users of whom about 7% have no profile. Then it plays the rollout:

1. a burst of sign-ups on the legacy trigger: colliding or short GitHub handles abort sign-ups;
2. `profileguard audit` names the problems and their fixes;
3. `profileguard install --replace-trigger on_auth_user_created` takes over, nothing removed;
4. `profileguard backfill` creates the missing profiles, with a progress bar;
5. a worker runs while a second burst of sign-ups hits an injected fault in the profile insert
   (a lock timeout in one sign-up in twenty): every sign-up commits, the worker repairs;
6. a before/after table. With --serve the dashboard stays up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from profileguard import sql as sqlfiles
from profileguard.audit import run_audit
from profileguard.backfill import Options, run_backfill
from profileguard.backfill import Progress as BackfillProgress
from profileguard.config import Settings
from profileguard.embedded import EmbeddedPostgres
from profileguard.install import install
from profileguard.repair import Worker

DEMO_DATABASE = "profileguard_demo"
LEGACY_TRIGGER = "on_auth_user_created"
FAULT_EVERY = 20
FIRST = [
    "Ada",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "Edsger",
    "Radia",
    "Guido",
    "Anita",
    "Donald",
    "Sophie",
    "Niklaus",
    "Hedy",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "Dijkstra",
    "Perlman",
    "van Rossum",
    "Borg",
    "Knuth",
    "Wilson",
    "Wirth",
    "Lamarr",
]


@dataclass
class Phase:
    """What one burst of sign-ups did."""

    attempted: int = 0
    committed: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def fake_signup(rng: random.Random, n: int) -> tuple[str | None, dict[str, Any], bool]:
    """(email, raw_user_meta_data, is_anonymous) shaped like a real provider's sign-up."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    name = f"{first} {last}"
    # GitHub handles collide now and then, and some are shorter than three characters.
    handle = first[:2].lower() if rng.random() < 0.15 else f"{first.lower()}{rng.randint(1, 40)}"
    kind = rng.choices(
        ["google", "github", "discord", "email", "magic_link", "anonymous"],
        weights=[30, 25, 10, 20, 10, 5],
    )[0]
    email = f"{first.lower()}.{last.lower().replace(' ', '')}{n}@example.com"
    if kind == "google":
        return (
            email,
            {
                "full_name": name,
                "name": name,
                "picture": f"https://img.test/{n}.png",
                "email": email,
                "email_verified": True,
            },
            False,
        )
    if kind == "github":
        return (
            email,
            {
                "user_name": handle,
                "preferred_username": handle,
                "full_name": name,
                "avatar_url": f"https://avatars.test/{n}",
            },
            False,
        )
    if kind == "discord":
        return (
            email,
            {
                "full_name": handle,
                "custom_claims": {"global_name": name},
                "avatar_url": f"https://cdn.test/{n}.png",
            },
            False,
        )
    if kind == "email":
        return email, {"full_name": name}, False
    if kind == "magic_link":
        return email, {}, False
    return None, {}, True


def supabase_signup(
    conn: psycopg.Connection,
    email: str | None,
    meta: dict[str, Any],
    anonymous: bool,
    *,
    fault: bool = False,
) -> uuid.UUID:
    """One sign-up as Supabase Auth makes it: one transaction, role set after the insert."""
    uid = uuid.uuid4()
    with conn.transaction():
        if fault:
            conn.execute("select set_config('demo.fault', 'on', true)")
        conn.execute(
            "insert into auth.users (instance_id, id, aud, role, email, raw_user_meta_data,"
            " raw_app_meta_data, is_anonymous, created_at, updated_at)"
            " values ('00000000-0000-0000-0000-000000000000', %s, 'authenticated', '', %s, %s,"
            ' \'{"provider": "email"}\', %s, now(), now())',
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


def signup_burst(
    url: str, total: int, *, seed: int, clients: int = 4, fault_every: int = 0
) -> Phase:
    """`total` sign-ups from `clients` threads as supabase_auth_admin; every `fault_every`-th
    carries the injected fault."""
    phase = Phase(attempted=total)
    lock = threading.Lock()
    started = time.monotonic()

    def client(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        with psycopg.connect(url, autocommit=True, options="-c search_path=auth") as conn:
            conn.execute("set role supabase_auth_admin")
            for n in range(index, total, clients):
                fault = fault_every > 0 and n % fault_every == 0
                try:
                    supabase_signup(conn, *fake_signup(rng, seed * 1_000_000 + n), fault=fault)
                    with lock:
                        phase.committed += 1
                except psycopg.Error as exc:
                    with lock:
                        phase.failed += 1
                        key = f"{exc.sqlstate} {exc.diag.message_primary or ''}"[:90]
                        phase.errors[key] = phase.errors.get(key, 0) + 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.monotonic() - started
    return phase


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


def missing(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "select count(*) from auth.users u"
        " where not exists (select from public.profiles p where p.id = u.id)"
    ).fetchone()
    return int(row[0]) if row else 0


def seed_existing_users(conn: psycopg.Connection, users: int) -> int:
    """`users` existing users, imported in bulk (no trigger fired), ~93% given a profile by
    the app back then; returns how many were left without one."""
    conn.execute("set session_replication_role = replica")  # an import: triggers do not fire
    conn.execute(
        "insert into auth.users (instance_id, id, aud, role, email, raw_user_meta_data,"
        " raw_app_meta_data, created_at, updated_at)"
        " select '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated',"
        " 'authenticated', 'member' || g || '@example.com',"
        " jsonb_build_object('full_name', 'Member ' || g), '{\"provider\": \"email\"}',"
        " now() - make_interval(days => 1 + g %% 700), now()"
        " from generate_series(1, %s) g",
        (users,),
    )
    conn.execute("set session_replication_role = origin")
    conn.execute("select setseed(0.7)")  # the same users lack a profile in every run
    conn.execute(
        "insert into public.profiles (id, username, full_name)"
        " select id, 'member' || substr(md5(id::text), 1, 10), raw_user_meta_data ->> 'full_name'"
        " from auth.users where random() >= 0.07"
    )
    return missing(conn)


def _count(conn: psycopg.Connection, query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def show_burst(console: Console, title: str, phase: Phase, missing_after: int) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("sign-ups attempted", str(phase.attempted))
    table.add_row("sign-ups committed", f"[green]{phase.committed}[/]")
    style = "bold red" if phase.failed else "green"
    table.add_row(
        'sign-ups failed ("Database error saving new user")', f"[{style}]{phase.failed}[/]"
    )
    table.add_row("users without a profile", str(missing_after))
    console.print(table)
    for error, count in sorted(phase.errors.items(), key=lambda kv: -kv[1]):
        console.print(f"  {count:>4}x {error}", highlight=False)


def show_audit(console: Console, settings: Settings) -> int:
    report = run_audit(settings)
    table = Table(title="profileguard audit", title_justify="left", show_lines=False)
    for column in ("severity", "finding", "fix"):
        table.add_column(column, overflow="fold")
    style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    for finding in report.findings:
        if finding.severity == "info":
            continue
        fix = (finding.fix or "").splitlines()
        table.add_row(
            f"[{style[finding.severity]}]{finding.severity}[/]",
            finding.title,
            fix[0] + (" …" if len(fix) > 1 else "") if fix else "",
        )
    console.print(table)
    return report.count("error")


def run_backfill_with_bar(console: Console, settings: Settings) -> dict[str, Any]:
    with Progress(
        TextColumn("backfill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8} rows/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("backfill", total=None, rate="")

        def progress(p: BackfillProgress) -> None:
            bar.update(
                task,
                completed=p.scanned,
                total=max(p.total_estimate, p.scanned),
                rate=f"{p.rows_per_second:,.0f}",
            )

        report = run_backfill(settings, Options(), progress=progress)
        bar.update(task, completed=report.scanned, total=report.scanned)
    return report.as_dict()


def run_demo(
    console: Console,
    *,
    database_url: str | None = None,
    users: int = 10_000,
    signups: int = 500,
    serve: bool = False,
    port: int = 8787,
) -> dict[str, Any]:
    """Play the rollout and return the before/after figures."""
    started = time.monotonic()
    console.rule("[bold]profileguard demo")
    where = "an embedded PostgreSQL" if database_url is None else f"database {DEMO_DATABASE}"
    console.print(f"Starting {where}…")
    with demo_database(database_url) as url, psycopg.connect(url, autocommit=True) as conn:
        existing_missing = _legacy_app(console, conn, users)

        console.rule("1. Sign-ups on the legacy trigger")
        before = signup_burst(url, signups, seed=1)
        before_missing = missing(conn)
        show_burst(console, f"{signups} sign-ups, legacy trigger", before, before_missing)

        console.rule("2. profileguard audit")
        settings = Settings(database_url=url)
        show_audit(console, settings)

        console.rule("3. profileguard install --replace-trigger " + LEGACY_TRIGGER)
        _take_over(console, settings)

        console.rule("4. profileguard backfill")
        backfill = run_backfill_with_bar(console, settings)
        console.print(
            f"created {backfill['created']} profiles, {backfill['failed']} failed, "
            f"{backfill['batches']} batches, {backfill['rows_per_second']:,.0f} rows/s."
        )

        console.rule("5. Sign-ups with an injected fault, the worker running")
        conn.execute(sqlfiles.read("fixtures/demo_fault.sql"))
        with _worker(settings):
            after, heal_seconds = _faulty_burst(url, conn, signups)
            after_missing = missing(conn)
            failures = _count(
                conn, "select count(*) from profileguard.failures where source = 'trigger'"
            )
            show_burst(
                console,
                f"{signups} sign-ups, profileguard (1 in {FAULT_EVERY} with a "
                "lock timeout injected into the profile insert)",
                after,
                after_missing,
            )
            console.print(
                f"The trigger recorded {failures} failures (SQLSTATE 55P03, category "
                "transient); the worker repaired them."
            )
            worker_repairs, slowest_repair, suffixed = _repair_figures(conn)

            figures = {
                "existing users without a profile": (existing_missing, 0),
                "sign-ups attempted": (before.attempted, after.attempted),
                "failed sign-ups": (before.failed, after.failed),
                "users missing a profile at the end": (before_missing, after_missing),
                "failures recorded (SQLSTATE)": (0, failures),
                "profiles created by the backfill": (0, backfill["created"]),
                "profiles repaired by the worker": (0, worker_repairs),
                "usernames suffixed instead of failing": (0, suffixed),
                "slowest repair after a failed sign-up": ("never", f"{slowest_repair:.2f} s"),
                "time to 100% after the burst": ("never", f"{heal_seconds:.2f} s"),
            }
            console.rule("6. Before and after")
            show_figures(console, figures)
            console.print(f"Done in {time.monotonic() - started:.1f} s.")
            if serve:
                _serve(console, settings, url, port)
        return {label: {"before": old, "after": new} for label, (old, new) in figures.items()}


def _legacy_app(console: Console, conn: psycopg.Connection, users: int) -> int:
    """Build the app as many are (Supabase-shaped auth.users, the starter profiles table, the
    per-row trigger) with `users` existing users; returns how many of them have no profile."""
    version = conn.execute("show server_version").fetchone()
    console.print(f"PostgreSQL {version[0] if version else '?'} is up.")
    conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
    conn.execute(sqlfiles.read("fixtures/demo_legacy.sql"))
    console.print(
        "An app as many are: Supabase-shaped [bold]auth.users[/], the starter "
        "[bold]public.profiles[/] (username unique, ≥ 3 characters) and the "
        f"per-row trigger [bold]{LEGACY_TRIGGER}[/] → handle_new_user()."
    )
    existing_missing = seed_existing_users(conn, users)
    console.print(
        f"{users:,} existing users; [bold]{existing_missing}[/] of them "
        f"({100 * existing_missing / users:.1f}%) have no profile."
    )
    return existing_missing


def _take_over(console: Console, settings: Settings) -> None:
    """Install profileguard, taking over from the legacy trigger."""
    result = install(settings, replace_triggers=[LEGACY_TRIGGER])
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(
        f"Installed schema version {result.version_after}; the legacy trigger is "
        "taken over (uninstall restores it)."
    )


@contextmanager
def _worker(settings: Settings) -> Iterator[None]:
    """A worker running in a thread, stopped at the end of the block."""
    worker = Worker(
        settings,
        worker_id="demo-worker",
        incremental_interval=0.5,
        full_interval=2.0,
        heartbeat_interval=1.0,
        poll_interval=0.1,
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)
    worker.close()


def _faulty_burst(url: str, conn: psycopg.Connection, signups: int) -> tuple[Phase, float]:
    """Sign-ups with the injected fault; returns them and the seconds until every user had a
    profile (at most 30)."""
    after = signup_burst(url, signups, seed=2, fault_every=FAULT_EVERY)
    burst_end = time.monotonic()
    while missing(conn) and time.monotonic() - burst_end < 30:
        time.sleep(0.02)
    return after, time.monotonic() - burst_end


def _repair_figures(conn: psycopg.Connection) -> tuple[int, float, int]:
    """Profiles the worker repaired, the slowest repair after a failed sign-up (seconds), and
    usernames suffixed instead of failing."""
    worker_repairs = _count(
        conn, "select count(*) from profileguard.events where kind = 'repair' and source = 'worker'"
    )
    slowest = conn.execute(
        "select extract(epoch from max(r.created_at - f.created_at))"
        " from profileguard.failures f join profileguard.events r"
        " on r.user_id = f.user_id and r.kind = 'repair'"
    ).fetchone()
    slowest_repair = float(slowest[0]) if slowest and slowest[0] is not None else 0.0
    suffixed = _count(conn, "select count(*) from public.profiles where username ~ '_[0-9a-f]{8}$'")
    return worker_repairs, slowest_repair, suffixed


def show_figures(console: Console, figures: dict[str, tuple[Any, Any]]) -> None:
    """The before/after table."""
    table = Table(title="before vs with profileguard", title_justify="left")
    table.add_column("")
    table.add_column("legacy trigger", justify="right")
    table.add_column("profileguard", justify="right")
    for label, (old, new) in figures.items():
        table.add_row(label, str(old), f"[bold green]{new}[/]")
    console.print(table)


def _serve(console: Console, settings: Settings, url: str, port: int) -> None:
    """Keep the dashboard running on the demo database until Ctrl-C."""
    from profileguard.web import serve as serve_web

    console.print(f"\nDashboard: [bold]http://127.0.0.1:{port}/[/]  (Ctrl-C stops it)")
    console.print(f"Connect to the demo database: {url}", highlight=False)
    with contextlib.suppress(KeyboardInterrupt):
        serve_web(settings, host="127.0.0.1", port=port)

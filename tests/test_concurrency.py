"""Concurrent ensure_profile calls and concurrent signups."""

from __future__ import annotations

import threading
import time

import psycopg
from conftest import key_hash

from profileguard.install import set_enabled

ENSURE_CALLERS = 100
SIGNUP_THREADS = 8
SIGNUPS_PER_THREAD = 50


def _connect_retrying(db) -> psycopg.Connection:
    """Connect, waiting out 'too many clients' when the server is shared (bounded)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return db.connect()
        except psycopg.OperationalError as exc:
            if "too many clients" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _free_connection_slots(db) -> int:
    return int(
        db.scalar(
            "select current_setting('max_connections')::int"
            " - (select count(*) from pg_stat_activity where backend_type = 'client backend')"
        )
    )


def _run_threads(target, args_list) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrapped(*args):
        try:
            target(*args)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=args) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_100_concurrent_ensure_profile_of_one_user(installed):
    set_enabled(installed.settings, False)
    uid = installed.signup({"user_name": "contended", "full_name": "Contended"})
    set_enabled(installed.settings, True)
    assert installed.scalar("select count(*) from public.profiles") == 0

    # Every caller has its own connection, opened before the barrier so they all start together:
    # 100 of them, or as many as the server has free slots for (less a margin for its other
    # clients) — a stock server allows 100 in all.
    callers = min(ENSURE_CALLERS, _free_connection_slots(installed) - 10)
    assert callers >= 50, f"only {callers} connections free on the server"
    conns = []
    try:
        for _ in range(callers):
            conns.append(_connect_retrying(installed))
        barrier = threading.Barrier(callers, timeout=60)
        results: list[tuple] = []
        lock = threading.Lock()

        def call(conn: psycopg.Connection) -> None:
            barrier.wait()
            row = conn.execute(
                "select profile_id, created, profile from profileguard.ensure_profile(%s)",
                (uid,),
            ).fetchone()
            with lock:
                results.append(row)

        errors = _run_threads(call, [(c,) for c in conns])
    finally:
        for c in conns:
            c.close()

    assert errors == []
    assert len(results) == callers
    assert installed.scalar("select count(*) from public.profiles") == 1
    assert sum(1 for r in results if r[1]) == 1
    assert {r[0] for r in results} == {uid}
    # Every caller got the same, complete profile.
    assert {r[2]["username"] for r in results} == {"contended"}
    assert {r[2]["full_name"] for r in results} == {"Contended"}
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and user_id = %s",
            (str(uid),),
        )
        == 1
    )
    assert installed.scalar("select count(*) from profileguard.failures") == 0


def test_concurrent_signups_all_get_profiles(installed):
    barrier = threading.Barrier(SIGNUP_THREADS, timeout=60)
    created: list = []
    lock = threading.Lock()

    def worker(thread_no: int) -> None:
        conn = _connect_retrying(installed)
        try:
            barrier.wait()
            for i in range(SIGNUPS_PER_THREAD):
                # Every thread signs up the same 50 names at the same time: they collide.
                uid = installed.signup(
                    {"user_name": f"crowd{i}", "full_name": f"T{thread_no} #{i}"}, conn=conn
                )
                with lock:
                    created.append(uid)
        finally:
            conn.close()

    errors = _run_threads(worker, [(n,) for n in range(SIGNUP_THREADS)])
    total = SIGNUP_THREADS * SIGNUPS_PER_THREAD
    assert errors == []
    assert len(created) == total
    assert installed.scalar("select count(*) from auth.users") == total
    assert installed.scalar("select count(*) from public.profiles") == total
    assert (
        installed.scalar(
            "select count(*) from auth.users u left join public.profiles p using (id)"
            " where p.id is null"
        )
        == 0
    )
    assert installed.scalar("select count(*) from profileguard.failures") == 0
    # Each name is held plain by exactly one user; everyone else got a suffix of their own id.
    with installed.connect() as conn:
        rows = conn.execute(
            "select p.id, p.username, u.raw_user_meta_data ->> 'user_name'"
            " from public.profiles p join auth.users u using (id)"
        ).fetchall()
    plain = [name for _, name, base in rows if name == base]
    assert sorted(plain) == sorted(f"crowd{i}" for i in range(SIGNUPS_PER_THREAD))
    for uid, name, base in rows:
        if name != base:
            assert name in (f"{base}_{key_hash(uid)}", f"{base}_{key_hash(uid, 16)}"), (uid, name)

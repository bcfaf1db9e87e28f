"""Short transactions for DDL that locks the identity table, which every login updates.

Creating or replacing a trigger (or a foreign key, or dropping the schema that owns a trigger)
locks auth.users against the `UPDATE … last_sign_in_at` of each sign-in. While such a lock request
waits behind a long transaction, every login queues behind it; so each attempt waits at most
`lock_timeout`, then gives way and tries again after a full-jitter backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from profileguard.config import Settings
from profileguard.db import connect, translate
from profileguard.errors import ProfileGuardError

T = TypeVar("T")

INSTALL_LOCK = "profileguard.install"
# How long one attempt of DDL on the identity or profile table may wait for a lock (logins wait
# at most about this long behind it). Not the sign-up trigger's Settings.lock_timeout_ms.
DDL_LOCK_TIMEOUT_MS = 100
# How long to keep trying before giving up, and the backoff between attempts.
RETRY_FOR_SECONDS = 60.0
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
# Lock timeout and deadlock: the same work may succeed a moment later.
RETRY_SQLSTATES = frozenset({"55P03", "40P01"})


def short_transaction(
    settings: Settings,
    work: Callable[[psycopg.Connection], T],
    *,
    what: str,
    lock_timeout_ms: int | None = None,
    retry_for: float = RETRY_FOR_SECONDS,
) -> T:
    """Run `work(conn)` in one transaction under the install lock, each lock wait capped at
    `lock_timeout_ms`; on a lock timeout roll back, back off and run it again (for `retry_for`
    seconds at most). `work` must read what it needs inside, as each attempt starts afresh."""
    if lock_timeout_ms is None:
        lock_timeout_ms = DDL_LOCK_TIMEOUT_MS  # read at call time: the benchmark compares values
    deadline = time.monotonic() + retry_for
    attempt = 0
    conn = connect(settings)
    try:
        while True:
            try:
                conn.execute(f"set local lock_timeout = {int(lock_timeout_ms)}")
                conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (INSTALL_LOCK,))
                result = work(conn)
                conn.commit()
                return result
            except psycopg.Error as exc:
                conn.rollback()
                if exc.sqlstate not in RETRY_SQLSTATES:
                    raise translate(exc) from exc
                attempt += 1
                pause = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
                if time.monotonic() + pause > deadline:
                    raise ProfileGuardError(
                        f"{what}: could not take the locks it needs within {retry_for:.0f} s "
                        f"({attempt} attempts of {lock_timeout_ms} ms each): a long transaction "
                        f"holds {settings.identity}",
                        hint="find it with: select pid, xact_start, state, query from "
                        "pg_stat_activity where xact_start < now() - interval '1 minute'; "
                        "then run the same command again (nothing was left half done)",
                    ) from exc
                time.sleep(pause)
            except BaseException:
                conn.rollback()
                raise
    finally:
        conn.close()

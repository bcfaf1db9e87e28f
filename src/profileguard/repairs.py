"""Per-user repair state (`profileguard.repair_state`), shared by the reconciler and the backfill.

A user whose profile cannot be created gets one more attempt counted, a capped full-jitter backoff
and, once the attempts reach the limit, a quarantine plus one 'quarantine' event (with SQLSTATE).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from profileguard import sql as sqlfiles

log = logging.getLogger(__name__)

HISTORY_LIMIT = 50
MESSAGE_LIMIT = 2000
QUERIES = "repairs.sql"


@dataclass(frozen=True)
class Failure:
    """One user whose profile could not be created, and why."""

    user_id: Any
    sqlstate: str | None
    message: str


def failure_from(user_id: Any, exc: psycopg.Error) -> Failure:
    """The Failure of `user_id` for the driver error `exc` (message cut to MESSAGE_LIMIT)."""
    message = (exc.diag.message_primary if exc.sqlstate else None) or str(exc)
    return Failure(user_id, exc.sqlstate, message[:MESSAGE_LIMIT])


def forget(conn: psycopg.Connection, user_ids: Iterable[Any]) -> None:
    """Drop the repair state of users that have their profile now."""
    ids = [str(i) for i in user_ids]
    if ids:
        conn.execute(sqlfiles.queries(QUERIES)["forget"], {"ids": ids})


def record_failures(
    conn: psycopg.Connection,
    failures: Sequence[Failure],
    *,
    source: str,
    max_attempts: int,
    backoff_base: float,
    backoff_cap: float,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Count one failed attempt for each user; returns how many this call quarantined.

    Runs in the caller's transaction. A user is quarantined when its attempts reach
    `max_attempts` (1 quarantines at once); each quarantine also records a 'quarantine' event.
    """
    queries = sqlfiles.queries(QUERIES)
    quarantined = 0
    for failure in failures:
        row = conn.execute(
            queries["record_failure"],
            {
                "uid": str(failure.user_id),
                "cap": backoff_cap,
                "base": backoff_base,
                "state": failure.sqlstate,
                "message": failure.message,
                "max": max_attempts,
                "limit": HISTORY_LIMIT,
                "source": source,
            },
        ).fetchone()
        attempts, newly = (int(row[0]), bool(row[1])) if row else (0, False)
        if not newly:
            continue
        quarantined += 1
        conn.execute(
            queries["quarantine_event"],
            {
                "source": source,
                "uid": str(failure.user_id),
                "state": failure.sqlstate,
                "message": failure.message,
                "detail": json.dumps({"attempts": attempts, **(detail or {})}, default=str),
            },
        )
        log.info(
            "quarantined user %s after %d attempt(s): %s %s",
            failure.user_id, attempts, failure.sqlstate, failure.message,
        )
    return quarantined


__all__ = ["Failure", "failure_from", "forget", "record_failures"]

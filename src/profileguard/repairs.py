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
        conn.execute(sqlfiles.query("forget", QUERIES), {"ids": ids})


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

    Runs in the caller's transaction, through profileguard.note_repair_failure(): a user is
    quarantined when its attempts reach `max_attempts` (1 quarantines at once), with one
    'quarantine' event carrying `detail`.
    """
    query = sqlfiles.query("record_failure", QUERIES)
    extra = json.dumps(dict(detail or {}), default=str)
    quarantined = 0
    for failure in failures:
        row = conn.execute(
            query,
            {
                "uid": str(failure.user_id),
                "state": failure.sqlstate,
                "message": failure.message,
                "source": source,
                "max": max_attempts,
                "base": backoff_base,
                "cap": backoff_cap,
                "detail": extra,
            },
        ).fetchone()
        attempts, newly = (int(row[0]), bool(row[1])) if row else (0, False)
        if newly:
            quarantined += 1
            log.info(
                "quarantined user %s after %d attempt(s): %s %s",
                failure.user_id, attempts, failure.sqlstate, failure.message,
            )
    return quarantined


__all__ = ["Failure", "failure_from", "forget", "record_failures"]

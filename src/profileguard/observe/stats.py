"""Figures: what `profileguard.stats()` returns (sql/functions/observe.sql), and the lists beside
it (audit trail, quarantine, history, alert states).

stats() is cheap at any table size: a periodic full sweep (`refresh_stats()`) counts, the bounded
frequent check (`check_invariant()`, run by stats() every ~2 s) finds users without a profile that
the trigger never saw, and reads in between add only what changed since.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from profileguard.config import Settings
from profileguard.db import connect, translate
from profileguard.installation import require_current


def open_connection(settings: Settings) -> psycopg.Connection:
    """An autocommit connection for monitoring reads (stats() also records a small sample)."""
    return connect(settings, autocommit=True)


def require_monitoring(conn: psycopg.Connection) -> int:
    """The installed schema version; raises NotInstalledError when it has no monitoring."""
    try:
        return require_current(conn, missing="monitoring")
    except psycopg.Error as exc:
        raise translate(exc) from exc


def read_stats(conn: psycopg.Connection, *, window_seconds: float | None = None) -> dict[str, Any]:
    """Every figure, as `profileguard.stats()` returns it (JSON-ready): the success-rate window,
    the workers' heartbeat age and the backfill's stall time are the installed thresholds (the
    window is `window_seconds` when given)."""
    try:
        row = conn.execute(
            "select profileguard.stats(make_interval(secs => %s))", (window_seconds,)
        ).fetchone()
    except psycopg.Error as exc:
        raise translate(exc, context="reading profileguard.stats()") from exc
    return dict(row[0]) if row else {}


def refresh(conn: psycopg.Connection) -> bool:
    """Run the full sweep (a scan of the identity table); False if another one is running."""
    try:
        row = conn.execute("select profileguard.refresh_stats()").fetchone()
    except psycopg.Error as exc:
        raise translate(exc, context="profileguard.refresh_stats()") from exc
    return bool(row and row[0])


def _rows(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            return [_jsonable(r) for r in cur.execute(query, params).fetchall()]
    except psycopg.Error as exc:
        raise translate(exc) from exc


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def events(
    conn: psycopg.Connection,
    *,
    limit: int = 50,
    before: int | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """One page of the audit trail, newest first; `next_before` fetches the following page."""
    limit = max(1, min(limit, 500))
    items = _rows(
        conn,
        "select id, created_at, kind, source, user_id, sqlstate, category, message, detail"
        " from profileguard.events"
        " where (%(before)s::bigint is null or id < %(before)s)"
        " and (%(kind)s::text is null or kind = %(kind)s)"
        " order by id desc limit %(limit)s",
        {"before": before, "kind": kind, "limit": limit + 1},
    )
    more = len(items) > limit
    items = items[:limit]
    return {
        "items": items,
        "next_before": items[-1]["id"] if more and items else None,
        "limit": limit,
    }


def quarantine(conn: psycopg.Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    """Quarantined users, most recent first, with their last error."""
    return _rows(
        conn,
        "select user_id, attempts, quarantined_at, last_sqlstate,"
        " profileguard.sqlstate_category(last_sqlstate) as category, last_message"
        " from profileguard.repair_state where quarantined_at is not null"
        " order by quarantined_at desc limit %(limit)s",
        {"limit": max(1, min(limit, 1000))},
    )


def history(
    conn: psycopg.Connection, *, hours: float = 24.0, points: int = 240
) -> list[dict[str, Any]]:
    """Samples of users, missing profiles, failures and repairs over time (oldest first),
    thinned to at most `points` rows."""
    return _rows(
        conn,
        "select taken_at, users, missing, quarantined, failures, repairs from ("
        " select distinct on (bucket) * from ("
        "  select s.*, ntile(%(points)s) over (order by s.taken_at) as bucket"
        "  from profileguard.stats_samples s"
        "  where s.taken_at >= now() - make_interval(secs => %(secs)s)) x"
        " order by bucket, taken_at desc) y"
        " order by taken_at",
        {"secs": hours * 3600, "points": max(2, min(points, 2000))},
    )


def alert_states(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The persisted state of every alert rule evaluated so far."""
    return _rows(
        conn,
        "select rule, state, severity, value, threshold, message, fired_at, resolved_at,"
        " evaluated_at, fire_count, pending_delivery, delivery_attempts, last_delivery_error,"
        " delivered_at from profileguard.alert_state order by rule",
        {},
    )

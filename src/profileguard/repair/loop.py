"""The long-running worker: LISTEN fast path, incremental and full sweeps, the catalog look and
breaker probes, heartbeat, and reconnection with backoff."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from profileguard.db import NOT_INSTALLED_SQLSTATES, is_transient, keeps_session
from profileguard.errors import NotInstalledError, ProfileGuardError

if TYPE_CHECKING:
    from profileguard.repair.reconciler import Reconciler

log = logging.getLogger("profileguard.repair")

CHANNEL = "profileguard"
# Worker rows whose heartbeat is older than this are removed when a worker starts.
STALE_WORKER_DAYS = 7


def heartbeat(rec: Reconciler, conn: psycopg.Connection, state: str) -> None:
    with rec._lock:
        stats = {**rec.stats, "state": state}
    with conn.transaction():
        conn.execute(
            "insert into profileguard.workers"
            " (worker_id, hostname, pid, started_at, heartbeat_at, stats)"
            " values (%(id)s, %(host)s, %(pid)s, now(), now(), %(stats)s)"
            " on conflict (worker_id) do update set heartbeat_at = now(),"
            " hostname = excluded.hostname, pid = excluded.pid, stats = excluded.stats",
            {
                "id": rec.worker_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "stats": json.dumps(stats, default=str),
            },
        )


def run_forever(rec: Reconciler, stop_event: threading.Event) -> None:
    """Serve until stop_event is set: LISTEN fast path, incremental and full sweeps,
    heartbeat; reconnects with backoff on any database error, never exits on one. After
    profileguard was missing (uninstalled, being reinstalled) the first pass is a full one:
    users who signed up meanwhile had no trigger and left no failure behind."""
    failures = 0
    rec._full_due = True
    while not stop_event.is_set():
        try:
            _serve(rec, stop_event)
            break
        except (psycopg.Error, ProfileGuardError) as exc:
            failures += 1
            with rec._lock:
                rec.stats["errors"] += 1
                rec.stats["last_error"] = str(exc)
            missing = isinstance(exc, NotInstalledError) or (
                isinstance(exc, psycopg.Error) and exc.sqlstate in NOT_INSTALLED_SQLSTATES
            )
            passing = is_transient(exc) or missing
            level = logging.WARNING if passing else logging.ERROR
            log.log(
                level,
                "reconciler %s: %s; reconnecting",
                rec.worker_id,
                exc,
                extra={"event": "reconnect", "worker_id": rec.worker_id},
            )
            rec._drop_connection()
            # Faults that pass by themselves (server restarting, connections terminated,
            # profileguard being reinstalled): look again within a second; others back off
            # up to reconnect_cap.
            cap = min(1.0, rec.reconnect_cap) if passing else rec.reconnect_cap
            delay = random.uniform(0, min(cap, 0.1 * 2 ** min(failures, 20)))
            stop_event.wait(delay)
            with rec._lock:
                rec.stats["reconnects"] += 1
            rec._full_due = rec._full_due or missing
        else:
            failures = 0
    rec._drop_connection()
    try:
        conn = rec._connect()
        try:
            heartbeat(rec, conn, "stopped")
        finally:
            conn.close()
    except (psycopg.Error, ProfileGuardError) as exc:
        log.info("could not record the stop of %s: %s", rec.worker_id, exc)


def _listener(rec: Reconciler) -> psycopg.Connection | None:
    """A connection LISTENing for failures, or None where a session does not last: through a
    transaction-mode pooler (told, or a pooler whose mode is not set) a LISTEN would stay on a
    server connection the pooler hands to others; the worker only polls (every
    incremental_interval) there."""
    listener = rec._connect(autocommit=True)
    try:
        if keeps_session(rec.settings, listener):
            listener.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
            return listener
    except BaseException:
        listener.close()
        raise
    listener.close()
    if rec.settings.pooler is None and not rec._said_pooled:
        rec._said_pooled = True
        log.info(
            "connected through a pooler and no pooler setting: keeping nothing beyond a "
            'transaction, polling every %ss instead of LISTEN (set pooler = "session" if '
            "it is a session-mode pooler)",
            rec.incremental_interval,
        )
    return None


def _serve(rec: Reconciler, stop_event: threading.Event) -> None:
    listener = _listener(rec)
    try:
        conn = rec._connection()
        if rec._event_cursor is None:
            with conn.transaction():
                row = conn.execute(
                    "select coalesce(max(id), 0) from profileguard.events"
                ).fetchone()
            rec._event_cursor = int(row[0]) if row else 0
        heartbeat(rec, conn, "running")
        with conn.transaction():
            conn.execute(
                "delete from profileguard.workers"
                " where heartbeat_at < now() - make_interval(days => %(days)s)",
                {"days": STALE_WORKER_DAYS},
            )
        now = time.monotonic()
        next_full = now if rec._full_due else now + rec.full_interval
        # After a reconnect, look at what happened while we were away right away.
        next_incremental = now
        next_heartbeat = now + rec.heartbeat_interval
        next_heal = now
        while not stop_event.is_set():
            now = time.monotonic()
            if now >= next_heal:
                healed = rec.heal()
                next_heal = time.monotonic() + rec.probe_interval
                if (
                    healed["catalog_changed"]
                    or healed.get("released")
                    or healed.get("found_missing")
                ):
                    next_incremental = time.monotonic()
            if now >= next_full:
                rec.run_once(stop_event)
                next_full = time.monotonic() + rec.full_interval
                next_incremental = time.monotonic() + rec.incremental_interval
            elif now >= next_incremental:
                rec.run_incremental(stop_event)
                next_incremental = time.monotonic() + rec.incremental_interval
            if time.monotonic() >= next_heartbeat:
                heartbeat(rec, rec._connection(), "running")
                next_heartbeat = time.monotonic() + rec.heartbeat_interval
            wait = min(next_full, next_incremental, next_heartbeat, next_heal)
            wait -= time.monotonic()
            wait = max(0.0, min(wait, rec.poll_interval))
            if listener is None:
                stop_event.wait(wait)
                continue
            notices = list(listener.notifies(timeout=wait, stop_after=1))
            if notices and not stop_event.is_set():
                notices.extend(listener.notifies(timeout=0))
                with rec._lock:
                    rec.stats["notifications"] += 1
                if any(_unrecorded(n.payload) for n in notices):
                    # A failure the trigger could not record names no user: sweep for them.
                    rec.run_once(stop_event)
                    next_full = time.monotonic() + rec.full_interval
                else:
                    rec.run_incremental(stop_event)
    finally:
        if listener is not None:
            listener.close()


def _unrecorded(payload: str) -> bool:
    """True for the trigger's notice of a failure it could not record (its events table locked)."""
    try:
        message = json.loads(payload)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("recorded") is False

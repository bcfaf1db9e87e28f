"""The worker: one object that finds users without a profile and hands them to the one repair
engine (`profileguard.repair`, SQL), looks at the catalog and probes breakers (`heal`), and, run
for ever, serves: LISTEN fast path, incremental and full sweeps, heartbeat, reconnection with
backoff. Its connection and candidate queries are in connection.py."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from profileguard.config import Settings, WorkerOptions
from profileguard.db import NOT_INSTALLED_SQLSTATES, is_transient, keeps_session
from profileguard.errors import InvalidUserIdError, NotInstalledError, ProfileGuardError
from profileguard.install import CLAIM_SEED
from profileguard.install.replan import replan
from profileguard.installation import Installation
from profileguard.repair.connection import WorkerConnection
from profileguard.repair.drift import DriftRepair
from profileguard.repair.outcome import BatchOutcome, PassResult

log = logging.getLogger("profileguard.worker")

SOURCE = "worker"
CHANNEL = "profileguard"
# Worker rows whose heartbeat is older than this are removed when a worker starts.
STALE_WORKER_DAYS = 7


class Worker:
    """Finds users without a profile and creates their profiles; safe to run many at once, each
    with its own Worker (one connection, not thread-safe). Tunables: WorkerOptions' fields, as
    keyword arguments."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None, **options: Any):
        self.settings = settings
        self.options = replace(WorkerOptions(), **options)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.db = WorkerConnection(settings, self.options)
        self.stats: dict[str, Any] = {
            "passes": 0,
            "repaired": 0,
            "failed": 0,
            "quarantined": 0,
            "notifications": 0,
            "reconnects": 0,
            "errors": 0,
            "last_error": None,
            "drift_fixed": 0,
            "waiting": 0,
            "breakers_closed": 0,
            "catalog_changes": 0,
        }
        # Profiles out of step with their users: a separate pass (drift.py) after each of ours.
        self.drift = DriftRepair(
            settings, backoff_base=self.options.backoff_base, backoff_cap=self.options.backoff_cap
        )
        self._drift_warned = False
        self._planned = False  # the mapping is planned again at the first look, then on changes
        self._event_cursor: int | None = None
        # The last of profileguard.found_missing()'s sequence numbers handled.
        self._found_cursor = 0
        # A full sweep is due (at start, and after profileguard was missing for a while).
        self.full_due = True
        self._lock = threading.Lock()
        # Whether the worker has said it polls through a pooler whose mode is not set.
        self._said_pooled = False

    @property
    def installation(self) -> Installation:
        """What the worker repairs (read when it connects)."""
        return self.db.installation

    def close(self) -> None:
        """Close the worker's connections (it reconnects on next use)."""
        self.db.drop()
        self.drift.close()

    def _drift_pass(self, stop_event: threading.Event | None, *, full: bool) -> None:
        """The drift pass after a creation pass; its errors are logged, never stop ours."""
        try:
            result = (
                self.drift.run_full_step(stop_event)
                if full
                else self.drift.run_incremental(stop_event)
            )
        except (psycopg.Error, ProfileGuardError) as exc:
            if not self._drift_warned:  # e.g. an older schema: said once, not every pass
                log.warning("drift pass: %s", exc)
            self._drift_warned = True
            self.drift.close()
            return
        self._drift_warned = False
        with self._lock:
            self.stats["drift_fixed"] += result.fixed

    # ---------------------------------------------------------------- repair

    def _repair(self, ids: Sequence[Any]) -> BatchOutcome:
        """Claim `ids` and hand them to the engine, one transaction per call (retried as a whole
        on transient errors); ids the engine deferred (its subtransaction budget) get further
        calls, each its own transaction."""
        outcome = BatchOutcome(scanned=len(ids))
        pending = list(ids)
        while pending:
            deferred_before = outcome.deferred

            def run(conn: psycopg.Connection, batch: list[Any] = pending) -> list[Any]:
                with conn.transaction():
                    claimed = [
                        row[0]
                        for row in conn.execute(
                            self._claim_query(), {"ids": batch, "seed": CLAIM_SEED}
                        )
                    ]
                    if not claimed:
                        return []
                    row = conn.execute(
                        self._repair_query(),
                        {
                            "ids": claimed,
                            "source": SOURCE,
                            "max": self.options.max_attempts,
                            "base": self.options.backoff_base,
                            "cap": self.options.backoff_cap,
                            "quarantine": self.options.quarantine_retry,
                        },
                    ).fetchone()
                outcome.claimed = outcome.claimed or len(claimed)
                outcome.take(row[0] if row else {})
                return claimed

            claimed = self.db.retrying(run)
            if not claimed or outcome.deferred == deferred_before or outcome.systemic:
                break
            # Only the deferred ids are left without a profile and not held: filter again.
            pending = self.db.retrying(functools.partial(self.db.filter, ids=claimed))
        self._log_outcome(outcome)
        return outcome

    def _claim_query(self) -> sql.Composed:
        return sql.SQL(
            "select c.id from unnest(%(ids)s::{key}[]) as c(id)"
            " where pg_try_advisory_xact_lock(hashtextextended(c.id::text, %(seed)s))"
            " and not exists (select from {profile} p where p.{pkey} = c.id)"
        ).format(key=self.db.key, profile=self.db.profile, pkey=self.db.profile_key)

    def _repair_query(self) -> sql.Composed:
        return sql.SQL(
            "select profileguard.repair(%(ids)s::{key}[], %(source)s, %(max)s, %(base)s, %(cap)s,"
            " p_quarantine_retry => %(quarantine)s)"
        ).format(key=self.db.key)

    def _log_outcome(self, outcome: BatchOutcome) -> None:
        """One line per batch that did something: repaired, charged, quarantined, held."""
        if outcome.repaired:
            log.info(
                "repaired %d profile(s)",
                outcome.repaired,
                extra={"event": "repaired", "count": outcome.repaired, "worker_id": self.worker_id},
            )
        if outcome.failed:
            log.warning(
                "%d user(s) failed on their own data (%d quarantined)",
                outcome.failed,
                outcome.quarantined,
                extra={
                    "event": "failed",
                    "count": outcome.failed,
                    "quarantined": outcome.quarantined,
                    "worker_id": self.worker_id,
                },
            )
        for fault in outcome.systemic:
            log.warning(
                "breaker open: every user fails with %s (%s); %d user(s) wait",
                fault.get("fingerprint"),
                fault.get("message"),
                outcome.waiting,
                extra={
                    "event": "breaker_open",
                    "fingerprint": fault.get("fingerprint"),
                    "sqlstate": fault.get("sqlstate"),
                    "object": fault.get("object"),
                    "worker_id": self.worker_id,
                },
            )

    def _account(self, result: PassResult, outcome: BatchOutcome) -> None:
        result.add(outcome)
        with self._lock:
            self.stats["repaired"] += outcome.repaired
            self.stats["failed"] += outcome.failed
            self.stats["quarantined"] += outcome.quarantined
            self.stats["waiting"] += outcome.waiting

    # ---------------------------------------------------------------- passes

    def run_once(self, stop_event: threading.Event | None = None) -> PassResult:
        """One full sweep of the identity table; stops early (between batches) on stop_event."""
        started = time.monotonic()
        result = PassResult()
        after: Any = None
        while stop_event is None or not stop_event.is_set():
            batch = self.db.retrying(functools.partial(self.db.scan, after=after))
            if not batch:
                break
            after = batch[-1]
            self._account(result, self._repair(batch))
            if len(batch) < self.options.batch_size:
                break
        self.db.retrying(self._cleanup)
        if stop_event is None or not stop_event.is_set():
            self.full_due = False
        self._drift_pass(stop_event, full=True)
        result.duration = time.monotonic() - started
        with self._lock:
            self.stats["passes"] += 1
            self.stats["last_pass"] = result.as_dict()
        return result

    def _cleanup(self, conn: psycopg.Connection) -> None:
        """Drop repair state of users that have a profile now or no longer exist."""
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "delete from profileguard.repair_state r"
                    " where exists (select from {profile} p where p.{pkey} = r.user_id::{key})"
                    " or not exists (select from {identity} u where u.{ikey} = r.user_id::{key})"
                ).format(
                    profile=self.db.profile,
                    pkey=self.db.profile_key,
                    key=self.db.key,
                    identity=self.db.identity,
                    ikey=self.db.identity_key,
                )
            )

    def repair_users(
        self, ids: Iterable[Any], stop_event: threading.Event | None = None
    ) -> PassResult:
        """Repair just these users (those without a profile that are not backed off)."""
        started = time.monotonic()
        result = PassResult()
        pending = list(ids)
        for start in range(0, len(pending), self.options.batch_size):
            if stop_event is not None and stop_event.is_set():
                break
            chunk = pending[start : start + self.options.batch_size]

            def select(conn: psycopg.Connection, chunk: list[Any] = chunk) -> list[Any]:
                return self.db.filter(conn, chunk)

            batch = self.db.retrying(select)
            if batch:
                self._account(result, self._repair(batch))
        result.duration = time.monotonic() - started
        return result

    def run_incremental(self, stop_event: threading.Event | None = None) -> PassResult:
        """Users named in failure events since the last look (and in the last `recheck_seconds`),
        and users whose backoff is over."""
        started = time.monotonic()
        result = PassResult()
        if self._event_cursor is None:
            self._event_cursor = 0
        while stop_event is None or not stop_event.is_set():
            cursor = self._event_cursor

            def failures(conn: psycopg.Connection, cursor: int = cursor) -> list[tuple[Any, ...]]:
                with conn.transaction():
                    return conn.execute(
                        "select e.id, e.user_id from profileguard.events e"
                        " where e.kind = 'failure' and e.id > %(after)s and e.user_id is not null"
                        " order by e.id limit %(n)s",
                        {"after": cursor, "n": self.options.batch_size},
                    ).fetchall()

            rows = self.db.retrying(failures)
            if not rows:
                break
            ids = self.db.parse_ids(dict.fromkeys(str(r[1]) for r in rows))
            part = self.repair_users(ids)
            result.merge(part)
            self._event_cursor = int(rows[-1][0])
            if len(rows) < self.options.batch_size:
                break

        def due(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            with conn.transaction():
                return conn.execute(
                    "select user_id from profileguard.repair_state"
                    " where waiting_on is null and next_attempt_at <= now()"
                    " order by next_attempt_at limit %(n)s",
                    {"n": self.options.batch_size},
                ).fetchall()

        def recent(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            # Event ids are taken at insert, not at commit: a failure committed after a later id
            # was read lies below the cursor. Looking again at recent failures (cheap: users with
            # a profile are filtered out) catches it now; the full sweep catches anything older.
            with conn.transaction():
                return conn.execute(
                    "select e.user_id from profileguard.events e"
                    " where e.kind = 'failure' and e.user_id is not null and e.id <= %(cursor)s"
                    " and e.created_at > now() - make_interval(secs => %(secs)s)"
                    " group by e.user_id limit %(n)s",
                    {
                        "cursor": self._event_cursor,
                        "secs": self.options.recheck_seconds,
                        "n": self.options.batch_size,
                    },
                ).fetchall()

        for query in (recent, due):
            if stop_event is not None and stop_event.is_set():
                break
            rows = self.db.retrying(query)
            if rows:
                result.merge(self.repair_users(self.db.parse_ids(str(r[0]) for r in rows)))
        result.merge(self._repair_found(stop_event))
        self._drift_pass(stop_event, full=False)
        result.duration = time.monotonic() - started
        return result

    def retry(
        self, user_ids: Iterable[Any] | None = None, *, all_quarantined: bool = False
    ) -> PassResult:
        """Clear the attempts/quarantine of these users (or all quarantined ones) and repair them
        now."""
        texts = [str(u) for u in user_ids or ()]

        def reset(conn: psycopg.Connection) -> list[str]:
            with conn.transaction():
                rows = conn.execute(
                    "update profileguard.repair_state set attempts = 0, quarantined_at = null,"
                    " waiting_on = null, next_attempt_at = now(), updated_at = now()"
                    " where user_id = any(%(ids)s::text[])"
                    " or (%(all)s and quarantined_at is not null)"
                    " returning user_id",
                    {"ids": texts, "all": all_quarantined},
                ).fetchall()
            return [str(r[0]) for r in rows]

        if not texts and not all_quarantined:
            return PassResult()
        self.db.get()  # resolves the key type used by _parse_ids
        bad = [t for t in texts if not self.db.parse_ids([t])]
        if bad:
            raise InvalidUserIdError(
                f"not a user id ({self.db.key_type}): {', '.join(repr(b) for b in bad[:5])}",
                hint="pass ids of the identity table's key, or --all-quarantined",
            )
        reset_ids = self.db.retrying(reset)
        ids = self.db.parse_ids(dict.fromkeys([*texts, *reset_ids]))
        return self.repair_users(ids)

    def _repair_found(self, stop_event: threading.Event | None) -> PassResult:
        """Users the invariant check found without a profile (inserted with the trigger off, by
        `session_replication_role = replica`, by COPY): no failure event names them."""
        result = PassResult()
        while stop_event is None or not stop_event.is_set():
            cursor = self._found_cursor

            def found(conn: psycopg.Connection, cursor: int = cursor) -> list[tuple[Any, ...]]:
                with conn.transaction():
                    return conn.execute(
                        "select found_seq, user_id from profileguard.found_missing(%s, %s)",
                        (cursor, self.options.batch_size),
                    ).fetchall()

            rows = self.db.retrying(found)
            if not rows:
                break
            self._found_cursor = max(int(r[0]) for r in rows)
            result.merge(self.repair_users(self.db.parse_ids(str(r[1]) for r in rows)))
            if len(rows) < self.options.batch_size:
                break
        return result

    def heal(self) -> dict[str, Any]:
        """Look at the catalog (a change releases whoever a change could help) and probe the open
        breakers that are due; returns {"catalog_changed", "probed", "closed", "released"}."""

        def look(conn: psycopg.Connection) -> dict[str, Any]:
            with conn.transaction():
                changed = conn.execute("select profileguard.check_catalog()").fetchone()
            with conn.transaction():  # at most every 2 s, whoever calls it (stats() does too)
                invariant = conn.execute("select profileguard.check_invariant()").fetchone()
            with conn.transaction():
                probe = conn.execute("select profileguard.probe_breakers()").fetchone()
            result: dict[str, Any] = dict(probe[0]) if probe and probe[0] else {}
            result["catalog_changed"] = bool(changed and changed[0])
            result["found_missing"] = int(
                ((invariant[0] if invariant else None) or {}).get("found") or 0
            )
            return result

        result = self.db.retrying(look)
        if result["catalog_changed"]:
            log.info(
                "the profile table or profileguard changed: backed-off and quarantined"
                " users are tried again",
                extra={"event": "catalog_changed", "worker_id": self.worker_id},
            )
        if result.get("closed"):
            log.info(
                "breaker closed: %s user(s) released",
                result.get("released", 0),
                extra={
                    "event": "breaker_closed",
                    "released": result.get("released", 0),
                    "worker_id": self.worker_id,
                },
            )
        with self._lock:
            self.stats["breakers_closed"] += int(result.get("closed") or 0)
            self.stats["catalog_changes"] += int(result["catalog_changed"])
        if result["catalog_changed"] or not self._planned:
            result["mapping"] = self.replan()
        return result

    def replan(self) -> str:
        """Plan the mapping again against the profile table as it is now (install/replan.py):
        re-create the generated functions where they differ, or record that they are stale."""
        try:
            done = self.db.retrying(lambda conn: replan(conn, self.settings))
        except ProfileGuardError as exc:
            log.warning("could not plan the mapping again: %s", exc, extra={"event": "replan"})
            return "unknown"
        self._planned = done.outcome != "busy"
        if done.outcome == "replanned":
            log.info(
                "the profile table changed: the mapping was planned again (%s)",
                ", ".join(done.changed),
                extra={"event": "replanned", "worker_id": self.worker_id},
            )
        elif done.outcome == "stale":
            log.warning(done.reason, extra={"event": "mapping_stale", "worker_id": self.worker_id})
        return done.outcome

    # ---------------------------------------------------------------- serving

    def _heartbeat(self, conn: psycopg.Connection, state: str) -> None:
        with self._lock:
            stats = {**self.stats, "state": state}
        with conn.transaction():
            conn.execute(
                "insert into profileguard.workers"
                " (worker_id, hostname, pid, started_at, heartbeat_at, stats)"
                " values (%(id)s, %(host)s, %(pid)s, now(), now(), %(stats)s)"
                " on conflict (worker_id) do update set heartbeat_at = now(),"
                " hostname = excluded.hostname, pid = excluded.pid, stats = excluded.stats",
                {
                    "id": self.worker_id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "stats": json.dumps(stats, default=str),
                },
            )

    def run_forever(self, stop_event: threading.Event) -> None:
        """Serve until stop_event is set: LISTEN fast path, incremental and full sweeps,
        heartbeat; reconnects with backoff on any database error, never exits on one. After
        profileguard was missing (uninstalled, being reinstalled) the first pass is a full one:
        users who signed up meanwhile had no trigger and left no failure behind."""
        failures = 0
        self.full_due = True
        while not stop_event.is_set():
            try:
                self._serve(stop_event)
                break
            except (psycopg.Error, ProfileGuardError) as exc:
                failures += 1
                with self._lock:
                    self.stats["errors"] += 1
                    self.stats["last_error"] = str(exc)
                missing = isinstance(exc, NotInstalledError) or (
                    isinstance(exc, psycopg.Error) and exc.sqlstate in NOT_INSTALLED_SQLSTATES
                )
                passing = is_transient(exc) or missing
                level = logging.WARNING if passing else logging.ERROR
                log.log(
                    level,
                    "worker %s: %s; reconnecting",
                    self.worker_id,
                    exc,
                    extra={"event": "reconnect", "worker_id": self.worker_id},
                )
                self.db.drop()
                # Faults that pass by themselves (server restarting, connections terminated,
                # profileguard being reinstalled): look again within a second; others back off
                # up to reconnect_cap.
                cap = (
                    min(1.0, self.options.reconnect_cap) if passing else self.options.reconnect_cap
                )
                delay = random.uniform(0, min(cap, 0.1 * 2 ** min(failures, 20)))
                stop_event.wait(delay)
                with self._lock:
                    self.stats["reconnects"] += 1
                self.full_due = self.full_due or missing
            else:
                failures = 0
        self.db.drop()
        try:
            conn = self.db.connect()
            try:
                self._heartbeat(conn, "stopped")
            finally:
                conn.close()
        except (psycopg.Error, ProfileGuardError) as exc:
            log.info("could not record the stop of %s: %s", self.worker_id, exc)

    def _listener(self) -> psycopg.Connection | None:
        """A connection LISTENing for failures, or None where a session does not last: through a
        transaction-mode pooler (told, or a pooler whose mode is not set) a LISTEN would stay on a
        server connection the pooler hands to others; the worker only polls (every
        incremental_interval) there."""
        listener = self.db.connect(autocommit=True)
        try:
            if keeps_session(self.settings, listener):
                listener.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
                return listener
        except BaseException:
            listener.close()
            raise
        listener.close()
        if self.settings.pooler is None and not self._said_pooled:
            self._said_pooled = True
            log.info(
                "connected through a pooler and no pooler setting: keeping nothing beyond a "
                'transaction, polling every %ss instead of LISTEN (set pooler = "session" if '
                "it is a session-mode pooler)",
                self.options.incremental_interval,
            )
        return None

    def _serve(self, stop_event: threading.Event) -> None:
        listener = self._listener()
        try:
            conn = self.db.get()
            if self._event_cursor is None:
                with conn.transaction():
                    row = conn.execute(
                        "select coalesce(max(id), 0) from profileguard.events"
                    ).fetchone()
                self._event_cursor = int(row[0]) if row else 0
            self._heartbeat(conn, "running")
            with conn.transaction():
                conn.execute(
                    "delete from profileguard.workers"
                    " where heartbeat_at < now() - make_interval(days => %(days)s)",
                    {"days": STALE_WORKER_DAYS},
                )
            now = time.monotonic()
            next_full = now if self.full_due else now + self.options.full_interval
            # After a reconnect, look at what happened while we were away right away.
            next_incremental = now
            next_heartbeat = now + self.options.heartbeat_interval
            next_heal = now
            while not stop_event.is_set():
                now = time.monotonic()
                if now >= next_heal:
                    healed = self.heal()
                    next_heal = time.monotonic() + self.options.probe_interval
                    if (
                        healed["catalog_changed"]
                        or healed.get("released")
                        or healed.get("found_missing")
                    ):
                        next_incremental = time.monotonic()
                if now >= next_full:
                    self.run_once(stop_event)
                    next_full = time.monotonic() + self.options.full_interval
                    next_incremental = time.monotonic() + self.options.incremental_interval
                elif now >= next_incremental:
                    self.run_incremental(stop_event)
                    next_incremental = time.monotonic() + self.options.incremental_interval
                if time.monotonic() >= next_heartbeat:
                    self._heartbeat(self.db.get(), "running")
                    next_heartbeat = time.monotonic() + self.options.heartbeat_interval
                wait = min(next_full, next_incremental, next_heartbeat, next_heal)
                wait -= time.monotonic()
                wait = max(0.0, min(wait, self.options.poll_interval))
                if listener is None:
                    stop_event.wait(wait)
                    continue
                notices = list(listener.notifies(timeout=wait, stop_after=1))
                if notices and not stop_event.is_set():
                    notices.extend(listener.notifies(timeout=0))
                    with self._lock:
                        self.stats["notifications"] += 1
                    unrecorded = [m for m in map(_unrecorded, notices) if m is not None]
                    for message in unrecorded:
                        if message.get("source") == "sync":
                            ids = message.get("ids")
                            self.drift.tell(ids if isinstance(ids, list) else None)
                    if any(m.get("source") != "sync" for m in unrecorded):
                        # A failure the trigger could not record names no user: sweep for them.
                        self.run_once(stop_event)
                        next_full = time.monotonic() + self.options.full_interval
                    else:
                        # Including the users a sync named but could not record.
                        self.run_incremental(stop_event)
        finally:
            if listener is not None:
                listener.close()


def _unrecorded(notice: psycopg.Notify) -> dict[str, Any] | None:
    """A trigger's notice of a failure it could not record (its events table locked), else None."""
    try:
        message = json.loads(notice.payload)
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("recorded") is False:
        return message
    return None

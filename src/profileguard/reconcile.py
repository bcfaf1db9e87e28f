"""The reconciler: level-triggered repair of users that have no profile.

A pass scans the identity table in keyset batches for users without a profile and hands them to
the one repair engine, `profileguard.repair(ids, 'worker')` (SQL), which creates the missing
profiles set-based, isolates failing users by splitting (a bounded number of subtransactions per
call) and tells a user's own failure (charged: backoff, then quarantine) from a fault that fails
everyone (held behind a breaker on its fingerprint: not charged, never quarantined). Several
workers (threads, processes, hosts) can run at once: every candidate is claimed with
`pg_try_advisory_xact_lock`, and candidates another worker holds are skipped.

Every cycle the worker also looks at the profile table's catalog (`check_catalog()`: a change
releases backed-off and quarantined users and probes breakers at once) and probes the open
breakers that are due (`probe_breakers()`: one canary each; success releases everyone waiting).
Quarantined users are tried again hourly. `run_forever` adds LISTEN on 'profileguard' for a fast
path, periodic incremental and full sweeps, a heartbeat, and reconnection with backoff (≤ 1 s for
connection faults). Nothing outlives a transaction but the LISTEN, so behind a transaction-mode
pooler (setting `pooler = "transaction"`) the worker runs the same with polling only.

A Reconciler holds one connection and is not thread-safe: give each thread or process its own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from profileguard.config import Settings
from profileguard.db import NOT_INSTALLED_SQLSTATES, connect, is_transient, translate
from profileguard.drift import DriftRepair
from profileguard.errors import (
    ConfigError,
    InvalidUserIdError,
    NotInstalledError,
    ProfileGuardError,
)
from profileguard.installation import Installation
from profileguard.schema import CLAIM_SEED

log = logging.getLogger(__name__)

CHANNEL = "profileguard"
SOURCE = "worker"
APPLICATION_NAME = "profileguard-reconciler"
# Worker rows whose heartbeat is older than this are removed when a worker starts.
STALE_WORKER_DAYS = 7
# Each lock wait of the worker's own statements (scans, claims) is bounded by this.
WORKER_LOCK_TIMEOUT_MS = 1000
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})

T = TypeVar("T")


@dataclass
class PassResult:
    """What one pass (or a retry) did."""

    scanned: int = 0
    repaired: int = 0
    failed: int = 0
    quarantined: int = 0
    waiting: int = 0
    batches: int = 0
    duration: float = 0.0

    def add(self, other: BatchOutcome) -> None:
        self.scanned += other.scanned
        self.repaired += other.repaired
        self.failed += other.failed
        self.quarantined += other.quarantined
        self.waiting += other.waiting
        self.batches += 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BatchOutcome:
    """One repair transaction: candidates, what was claimed, and what the engine reported."""

    scanned: int = 0
    claimed: int = 0
    repaired: int = 0
    failed: int = 0
    quarantined: int = 0
    waiting: int = 0
    deferred: int = 0
    systemic: list[dict[str, Any]] = field(default_factory=list)

    def take(self, report: dict[str, Any]) -> None:
        """Add what one `profileguard.repair()` call reported."""
        self.repaired += int(report.get("created") or 0)
        self.failed += int(report.get("failed") or 0)
        self.quarantined += int(report.get("quarantined") or 0)
        self.waiting += int(report.get("waiting") or 0)
        self.deferred += int(report.get("deferred") or 0)
        self.systemic.extend(report.get("systemic") or [])


class Reconciler:
    """Finds users without a profile and creates their profiles; safe to run many at once."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        batch_size: int = 1000,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        transient_attempts: int = 8,
        transient_max_wait: float = 1.0,
        incremental_interval: float = 5.0,
        full_interval: float = 300.0,
        recheck_seconds: float = 120.0,
        heartbeat_interval: float = 10.0,
        reconnect_cap: float = 30.0,
        poll_interval: float = 0.5,
        probe_interval: float = 0.25,
        quarantine_retry: float = 3600.0,
    ):
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1", hint="pass batch_size >= 1")
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1", hint="pass max_attempts >= 1")
        settings.require_pooler_mode("worker")
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.transient_attempts = transient_attempts
        self.transient_max_wait = transient_max_wait
        self.incremental_interval = incremental_interval
        self.full_interval = full_interval
        self.heartbeat_interval = heartbeat_interval
        self.reconnect_cap = reconnect_cap
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self.quarantine_retry = quarantine_retry
        self.recheck_seconds = recheck_seconds
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
        self.drift = DriftRepair(settings, backoff_base=backoff_base, backoff_cap=backoff_cap)
        self._drift_warned = False
        self._conn: psycopg.Connection | None = None
        # What is installed (tables, key type), read on connecting: the worker serves the tables
        # the trigger serves, never those of a configuration that was not installed.
        self._installed: Installation | None = None
        self._key_type: str | None = None
        self._event_cursor: int | None = None
        # A full sweep is due (at start, and after profileguard was missing for a while).
        self._full_due = True
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- connections

    def _connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        return connect(self.settings, autocommit=autocommit, application_name=APPLICATION_NAME)

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._conn = self._connect()
            try:
                if not self.settings.transaction_pooler:
                    # A locked profile table is a fault to wait out in short steps, not a worker
                    # stuck in one statement (behind a transaction pooler a session setting would
                    # leak to other clients: the engine's own lock_timeout still applies there).
                    conn.execute("select pg_catalog.set_config('lock_timeout', %s, false)",
                                 (f"{WORKER_LOCK_TIMEOUT_MS}ms",))
                    conn.commit()
                self._use(Installation.require(conn))
            finally:
                conn.rollback()
        return conn

    def _use(self, installed: Installation) -> None:
        """Aim every query at the installed tables."""
        self._key_type = installed.require_key_type()
        self._installed = installed

    @property
    def installation(self) -> Installation:
        """What the worker repairs (read when it connects)."""
        if self._installed is None:
            raise RuntimeError("the reconciler has not connected yet")
        return self._installed

    @property
    def _identity(self) -> sql.Identifier:
        return self.installation.identity_sql

    @property
    def _ikey(self) -> sql.Identifier:
        return sql.Identifier(self.installation.identity.key)

    @property
    def _profile(self) -> sql.Identifier:
        return self.installation.profile_sql

    @property
    def _pkey(self) -> sql.Identifier:
        return sql.Identifier(self.installation.profile.key)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        """Close the worker's connection (it reconnects on next use)."""
        self._drop_connection()
        self.drift.close()

    def _drift_pass(self, stop_event: threading.Event | None, *, full: bool) -> None:
        """The drift pass after a creation pass; its errors are logged, never stop ours."""
        try:
            result = (self.drift.run_full_step(stop_event) if full
                      else self.drift.run_incremental(stop_event))
        except (psycopg.Error, ProfileGuardError) as exc:
            if not self._drift_warned:  # e.g. an older schema: said once, not every pass
                log.warning("drift pass: %s", exc)
            self._drift_warned = True
            self.drift.close()
            return
        self._drift_warned = False
        with self._lock:
            self.stats["drift_fixed"] += result.fixed

    @property
    def _key(self) -> sql.Composable:
        # The type text comes from format_type() in the catalog, never from configuration.
        assert self._key_type is not None
        return sql.SQL(self._key_type)

    def _retrying(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run fn(conn); transient errors reconnect if needed and retry with jittered backoff."""

        def attempt() -> T:
            conn = self._connection()
            try:
                return fn(conn)
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    self._drop_connection()
                elif not conn.autocommit:
                    conn.rollback()
                if is_transient(exc):
                    log.warning("transient error, retrying: %s", exc)
                    raise
                raise translate(exc) from exc

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_random_exponential(multiplier=0.05, max=self.transient_max_wait),
            stop=stop_after_attempt(self.transient_attempts),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    # ---------------------------------------------------------------- candidates

    def _skip_clause(self) -> sql.Composable:
        return sql.SQL(
            "not exists (select from {profile} p where p.{pkey} = u.{ikey})"
            " and not exists (select from profileguard.repair_state r"
            " where r.user_id = u.{ikey}::text"
            " and (r.waiting_on is not null or r.next_attempt_at > now()))"
        ).format(profile=self._profile, pkey=self._pkey, ikey=self._ikey)

    def _scan(self, conn: psycopg.Connection, after: Any) -> list[Any]:
        """The next batch of users without a profile, in key order, after `after`."""
        lower = sql.SQL("u.{} > %(after)s and ").format(self._ikey) if after is not None else (
            sql.SQL("")
        )
        query = sql.SQL(
            "select u.{ikey} from {identity} u where {lower}{skip} order by u.{ikey} limit %(n)s"
        ).format(ikey=self._ikey, identity=self._identity, lower=lower, skip=self._skip_clause())
        with conn.transaction():
            rows = conn.execute(query, {"after": after, "n": self.batch_size}).fetchall()
        return [row[0] for row in rows]

    def _filter(self, conn: psycopg.Connection, ids: Sequence[Any]) -> list[Any]:
        """Those of `ids` that exist, have no profile and are not backed off or quarantined."""
        query = sql.SQL(
            "select u.{ikey} from {identity} u where u.{ikey} = any(%(ids)s::{key}[]) and {skip}"
            " order by u.{ikey}"
        ).format(ikey=self._ikey, identity=self._identity, key=self._key, skip=self._skip_clause())
        with conn.transaction():
            return [row[0] for row in conn.execute(query, {"ids": list(ids)}).fetchall()]

    def _parse_ids(self, texts: Iterable[str | None]) -> list[Any]:
        """User ids as recorded in events/repair_state (text) that can be the identity key."""
        out: list[Any] = []
        for text in texts:
            if text is None:
                continue
            try:
                if self._key_type == "uuid":
                    out.append(uuid.UUID(text))
                elif self._key_type in INTEGER_TYPES:
                    out.append(int(text))
                else:
                    out.append(text)
            except ValueError:
                log.info("ignoring user id %r: not a %s", text, self._key_type)
        return out

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
                    claimed = [row[0] for row in conn.execute(self._claim_query(),
                                                              {"ids": batch, "seed": CLAIM_SEED})]
                    if not claimed:
                        return []
                    row = conn.execute(self._repair_query(), {
                        "ids": claimed, "source": SOURCE, "max": self.max_attempts,
                        "base": self.backoff_base, "cap": self.backoff_cap,
                        "quarantine": self.quarantine_retry,
                    }).fetchone()
                outcome.claimed = outcome.claimed or len(claimed)
                outcome.take(row[0] if row else {})
                return claimed

            claimed = self._retrying(run)
            if not claimed or outcome.deferred == deferred_before or outcome.systemic:
                break
            # Only the deferred ids are left without a profile and not held: filter again.
            pending = self._retrying(functools.partial(self._filter, ids=claimed))
        self._log_outcome(outcome)
        return outcome

    def _claim_query(self) -> sql.Composed:
        return sql.SQL(
            "select c.id from unnest(%(ids)s::{key}[]) as c(id)"
            " where pg_try_advisory_xact_lock(hashtextextended(c.id::text, %(seed)s))"
            " and not exists (select from {profile} p where p.{pkey} = c.id)"
        ).format(key=self._key, profile=self._profile, pkey=self._pkey)

    def _repair_query(self) -> sql.Composed:
        return sql.SQL(
            "select profileguard.repair(%(ids)s::{key}[], %(source)s, %(max)s, %(base)s, %(cap)s,"
            " p_quarantine_retry => %(quarantine)s)"
        ).format(key=self._key)

    def _log_outcome(self, outcome: BatchOutcome) -> None:
        """One line per batch that did something: repaired, charged, quarantined, held."""
        if outcome.repaired:
            log.info("repaired %d profile(s)", outcome.repaired,
                     extra={"event": "repaired", "count": outcome.repaired,
                            "worker_id": self.worker_id})
        if outcome.failed:
            log.warning("%d user(s) failed on their own data (%d quarantined)", outcome.failed,
                        outcome.quarantined,
                        extra={"event": "failed", "count": outcome.failed,
                               "quarantined": outcome.quarantined, "worker_id": self.worker_id})
        for fault in outcome.systemic:
            log.warning("breaker open: every user fails with %s (%s); %d user(s) wait",
                        fault.get("fingerprint"), fault.get("message"), outcome.waiting,
                        extra={"event": "breaker_open", "fingerprint": fault.get("fingerprint"),
                               "sqlstate": fault.get("sqlstate"), "object": fault.get("object"),
                               "worker_id": self.worker_id})

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
            batch = self._retrying(functools.partial(self._scan, after=after))
            if not batch:
                break
            after = batch[-1]
            self._account(result, self._repair(batch))
            if len(batch) < self.batch_size:
                break
        self._retrying(self._cleanup)
        if stop_event is None or not stop_event.is_set():
            self._full_due = False
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
                    profile=self._profile,
                    pkey=self._pkey,
                    key=self._key,
                    identity=self._identity,
                    ikey=self._ikey,
                )
            )

    def repair_users(self, ids: Iterable[Any], stop_event: threading.Event | None = None
                   ) -> PassResult:
        """Repair just these users (those without a profile that are not backed off)."""
        started = time.monotonic()
        result = PassResult()
        pending = list(ids)
        for start in range(0, len(pending), self.batch_size):
            if stop_event is not None and stop_event.is_set():
                break
            chunk = pending[start : start + self.batch_size]

            def select(conn: psycopg.Connection, chunk: list[Any] = chunk) -> list[Any]:
                return self._filter(conn, chunk)

            batch = self._retrying(select)
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
                        {"after": cursor, "n": self.batch_size},
                    ).fetchall()

            rows = self._retrying(failures)
            if not rows:
                break
            ids = self._parse_ids(dict.fromkeys(str(r[1]) for r in rows))
            part = self.repair_users(ids)
            self._merge(result, part)
            self._event_cursor = int(rows[-1][0])
            if len(rows) < self.batch_size:
                break

        def due(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            with conn.transaction():
                return conn.execute(
                    "select user_id from profileguard.repair_state"
                    " where waiting_on is null and next_attempt_at <= now()"
                    " order by next_attempt_at limit %(n)s",
                    {"n": self.batch_size},
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
                    {"cursor": self._event_cursor, "secs": self.recheck_seconds,
                     "n": self.batch_size},
                ).fetchall()

        for query in (recent, due):
            if stop_event is not None and stop_event.is_set():
                break
            rows = self._retrying(query)
            if rows:
                self._merge(result, self.repair_users(self._parse_ids(str(r[0]) for r in rows)))
        self._drift_pass(stop_event, full=False)
        result.duration = time.monotonic() - started
        return result

    @staticmethod
    def _merge(total: PassResult, part: PassResult) -> None:
        total.scanned += part.scanned
        total.repaired += part.repaired
        total.failed += part.failed
        total.quarantined += part.quarantined
        total.waiting += part.waiting
        total.batches += part.batches

    def retry(self, user_ids: Iterable[Any] | None = None, *, all_quarantined: bool = False
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
        self._connection()  # resolves the key type used by _parse_ids
        bad = [t for t in texts if not self._parse_ids([t])]
        if bad:
            raise InvalidUserIdError(
                f"not a user id ({self._key_type}): {', '.join(repr(b) for b in bad[:5])}",
                hint="pass ids of the identity table's key, or --all-quarantined",
            )
        reset_ids = self._retrying(reset)
        ids = self._parse_ids(dict.fromkeys([*texts, *reset_ids]))
        return self.repair_users(ids)

    def heal(self) -> dict[str, Any]:
        """Look at the catalog (a change releases whoever a change could help) and probe the open
        breakers that are due; returns {"catalog_changed", "probed", "closed", "released"}."""

        def look(conn: psycopg.Connection) -> dict[str, Any]:
            with conn.transaction():
                changed = conn.execute("select profileguard.check_catalog()").fetchone()
            with conn.transaction():
                probe = conn.execute("select profileguard.probe_breakers()").fetchone()
            result: dict[str, Any] = dict(probe[0]) if probe and probe[0] else {}
            result["catalog_changed"] = bool(changed and changed[0])
            return result

        result = self._retrying(look)
        if result["catalog_changed"]:
            log.info("the profile table or profileguard changed: backed-off and quarantined"
                     " users are tried again", extra={"event": "catalog_changed",
                                                     "worker_id": self.worker_id})
        if result.get("closed"):
            log.info("breaker closed: %s user(s) released", result.get("released", 0),
                     extra={"event": "breaker_closed", "released": result.get("released", 0),
                            "worker_id": self.worker_id})
        with self._lock:
            self.stats["breakers_closed"] += int(result.get("closed") or 0)
            self.stats["catalog_changes"] += int(result["catalog_changed"])
        return result

    # ---------------------------------------------------------------- the long-running worker

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
        self._full_due = True
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
                    isinstance(exc, psycopg.Error) and exc.sqlstate in NOT_INSTALLED_SQLSTATES)
                passing = is_transient(exc) or missing
                level = logging.WARNING if passing else logging.ERROR
                log.log(level, "reconciler %s: %s; reconnecting", self.worker_id, exc,
                        extra={"event": "reconnect", "worker_id": self.worker_id})
                self._drop_connection()
                # Faults that pass by themselves (server restarting, connections terminated,
                # profileguard being reinstalled): look again within a second; others back off
                # up to reconnect_cap.
                cap = min(1.0, self.reconnect_cap) if passing else self.reconnect_cap
                delay = random.uniform(0, min(cap, 0.1 * 2 ** min(failures, 20)))
                stop_event.wait(delay)
                with self._lock:
                    self.stats["reconnects"] += 1
                self._full_due = self._full_due or missing
            else:
                failures = 0
        self._drop_connection()
        try:
            conn = self._connect()
            try:
                self._heartbeat(conn, "stopped")
            finally:
                conn.close()
        except (psycopg.Error, ProfileGuardError) as exc:
            log.info("could not record the stop of %s: %s", self.worker_id, exc)

    def _serve(self, stop_event: threading.Event) -> None:
        # Behind a transaction-mode pooler a LISTEN would stay on a server connection the pooler
        # hands to others: the worker only polls (every incremental_interval) there.
        listener = None if self.settings.transaction_pooler else self._connect(autocommit=True)
        try:
            if listener is not None:
                listener.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
            conn = self._connection()
            if self._event_cursor is None:
                with conn.transaction():
                    row = conn.execute("select coalesce(max(id), 0) from profileguard.events"
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
            next_full = now if self._full_due else now + self.full_interval
            # After a reconnect, look at what happened while we were away right away.
            next_incremental = now
            next_heartbeat = now + self.heartbeat_interval
            next_heal = now
            while not stop_event.is_set():
                now = time.monotonic()
                if now >= next_heal:
                    healed = self.heal()
                    next_heal = time.monotonic() + self.probe_interval
                    if healed["catalog_changed"] or healed.get("released"):
                        next_incremental = time.monotonic()
                if now >= next_full:
                    self.run_once(stop_event)
                    next_full = time.monotonic() + self.full_interval
                    next_incremental = time.monotonic() + self.incremental_interval
                elif now >= next_incremental:
                    self.run_incremental(stop_event)
                    next_incremental = time.monotonic() + self.incremental_interval
                if time.monotonic() >= next_heartbeat:
                    self._heartbeat(self._connection(), "running")
                    next_heartbeat = time.monotonic() + self.heartbeat_interval
                wait = min(next_full, next_incremental, next_heartbeat, next_heal)
                wait -= time.monotonic()
                wait = max(0.0, min(wait, self.poll_interval))
                if listener is None:
                    stop_event.wait(wait)
                    continue
                notices = list(listener.notifies(timeout=wait, stop_after=1))
                if notices and not stop_event.is_set():
                    notices.extend(listener.notifies(timeout=0))
                    with self._lock:
                        self.stats["notifications"] += 1
                    if any(_unrecorded(n.payload) for n in notices):
                        # A failure the trigger could not record names no user: sweep for them.
                        self.run_once(stop_event)
                        next_full = time.monotonic() + self.full_interval
                    else:
                        self.run_incremental(stop_event)
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


__all__ = ["BatchOutcome", "PassResult", "Reconciler"]

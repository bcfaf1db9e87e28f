"""The worker's session: its settings, one connection aimed at the installed tables, retries of
transient errors, and the queries that find candidates (users without a profile that are due)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from profileguard.config import Settings, WorkerOptions
from profileguard.db import connect, is_transient, keeps_session, translate
from profileguard.drift import DriftRepair
from profileguard.errors import ConfigError, ProfileGuardError
from profileguard.installation import Installation

log = logging.getLogger("profileguard.repair")

APPLICATION_NAME = "profileguard-reconciler"
# Each lock wait of the worker's own statements (scans, claims) is bounded by this.
WORKER_LOCK_TIMEOUT_MS = 1000
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})

T = TypeVar("T")


class Session:
    """Settings, connection and candidate queries of one worker (not thread-safe)."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        batch_size: int = WorkerOptions.batch_size,
        max_attempts: int = WorkerOptions.max_attempts,
        backoff_base: float = WorkerOptions.backoff_base,
        backoff_cap: float = WorkerOptions.backoff_cap,
        transient_attempts: int = WorkerOptions.transient_attempts,
        transient_max_wait: float = WorkerOptions.transient_max_wait,
        incremental_interval: float = WorkerOptions.incremental_interval,
        full_interval: float = WorkerOptions.full_interval,
        recheck_seconds: float = WorkerOptions.recheck_seconds,
        heartbeat_interval: float = WorkerOptions.heartbeat_interval,
        reconnect_cap: float = WorkerOptions.reconnect_cap,
        poll_interval: float = WorkerOptions.poll_interval,
        probe_interval: float = WorkerOptions.probe_interval,
        quarantine_retry: float = WorkerOptions.quarantine_retry,
    ):
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1", hint="pass batch_size >= 1")
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1", hint="pass max_attempts >= 1")
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
        # The last of profileguard.found_missing()'s sequence numbers handled.
        self._found_cursor = 0
        # A full sweep is due (at start, and after profileguard was missing for a while).
        self._full_due = True
        self._lock = threading.Lock()
        # Whether the worker has said it polls through a pooler whose mode is not set.
        self._said_pooled = False

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
                if keeps_session(self.settings, conn):
                    # A locked profile table is a fault to wait out in short steps, not a worker
                    # stuck in one statement (through a transaction-mode pooler a session setting
                    # would stay for other clients: the engine's own lock_timeout applies there).
                    conn.execute(
                        "select pg_catalog.set_config('lock_timeout', %s, false)",
                        (f"{WORKER_LOCK_TIMEOUT_MS}ms",),
                    )
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
        lower = (
            sql.SQL("u.{} > %(after)s and ").format(self._ikey)
            if after is not None
            else (sql.SQL(""))
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

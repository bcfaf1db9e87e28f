"""The worker's connection: one connection aimed at the installed tables, retries of transient
errors, and the queries that find candidates (users without a profile that are due)."""

from __future__ import annotations

import contextlib
import logging
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
from profileguard.installation import Installation

log = logging.getLogger("profileguard.worker")

APPLICATION_NAME = "profileguard-worker"
# Each lock wait of the worker's own statements (scans, claims) is bounded by this.
WORKER_LOCK_TIMEOUT_MS = 1000
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})

T = TypeVar("T")


class WorkerConnection:
    """One connection of a worker, aimed at what is installed (not thread-safe)."""

    def __init__(self, settings: Settings, options: WorkerOptions):
        self.settings = settings
        self.options = options
        self._conn: psycopg.Connection | None = None
        # What is installed (tables, key type), read on connecting: the worker serves the tables
        # the trigger serves, never those of a configuration that was not installed.
        self._installed: Installation | None = None

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        """A new connection named for the worker (the caller owns it)."""
        return connect(self.settings, autocommit=autocommit, application_name=APPLICATION_NAME)

    def get(self) -> psycopg.Connection:
        """The worker's connection, (re)connected when needed; reads what is installed."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._conn = self.connect()
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
                installed = Installation.require(conn)
                installed.require_key_type()
                self._installed = installed
            finally:
                conn.rollback()
        return conn

    def drop(self) -> None:
        """Close the connection (the next use reconnects)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    @property
    def installation(self) -> Installation:
        """What the worker repairs (read when it connects)."""
        if self._installed is None:
            raise RuntimeError("the worker has not connected yet")
        return self._installed

    @property
    def identity(self) -> sql.Identifier:
        return self.installation.identity_sql

    @property
    def identity_key(self) -> sql.Identifier:
        return sql.Identifier(self.installation.identity.key)

    @property
    def profile(self) -> sql.Identifier:
        return self.installation.profile_sql

    @property
    def profile_key(self) -> sql.Identifier:
        return sql.Identifier(self.installation.profile.key)

    @property
    def key_type(self) -> str:
        """format_type() of the identity key, from the catalog (never from configuration)."""
        return self.installation.require_key_type()

    @property
    def key(self) -> sql.Composable:
        return sql.SQL(self.key_type)

    def retrying(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run fn(conn); transient errors reconnect if needed and retry with jittered backoff."""

        def attempt() -> T:
            conn = self.get()
            try:
                return fn(conn)
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    self.drop()
                elif not conn.autocommit:
                    conn.rollback()
                if is_transient(exc):
                    log.warning("transient error, retrying: %s", exc)
                    raise
                raise translate(exc) from exc

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_random_exponential(multiplier=0.05, max=self.options.transient_max_wait),
            stop=stop_after_attempt(self.options.transient_attempts),
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
        ).format(profile=self.profile, pkey=self.profile_key, ikey=self.identity_key)

    def scan(self, conn: psycopg.Connection, after: Any) -> list[Any]:
        """The next batch of users without a profile, in key order, after `after`."""
        lower = (
            sql.SQL("u.{} > %(after)s and ").format(self.identity_key)
            if after is not None
            else sql.SQL("")
        )
        query = sql.SQL(
            "select u.{ikey} from {identity} u where {lower}{skip} order by u.{ikey} limit %(n)s"
        ).format(
            ikey=self.identity_key, identity=self.identity, lower=lower, skip=self._skip_clause()
        )
        with conn.transaction():
            rows = conn.execute(query, {"after": after, "n": self.options.batch_size}).fetchall()
        return [row[0] for row in rows]

    def filter(self, conn: psycopg.Connection, ids: Sequence[Any]) -> list[Any]:
        """Those of `ids` that exist, have no profile and are not backed off or quarantined."""
        query = sql.SQL(
            "select u.{ikey} from {identity} u where u.{ikey} = any(%(ids)s::{key}[]) and {skip}"
            " order by u.{ikey}"
        ).format(
            ikey=self.identity_key, identity=self.identity, key=self.key, skip=self._skip_clause()
        )
        with conn.transaction():
            return [row[0] for row in conn.execute(query, {"ids": list(ids)}).fetchall()]

    def parse_ids(self, texts: Iterable[str | None]) -> list[Any]:
        """User ids as recorded in events/repair_state (text) that can be the identity key."""
        key_type = self.key_type
        out: list[Any] = []
        for text in texts:
            if text is None:
                continue
            try:
                if key_type == "uuid":
                    out.append(uuid.UUID(text))
                elif key_type in INTEGER_TYPES:
                    out.append(int(text))
                else:
                    out.append(text)
            except ValueError:
                log.info("ignoring user id %r: not a %s", text, key_type)
        return out

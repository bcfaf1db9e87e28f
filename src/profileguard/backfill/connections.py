"""The connections of one run: one per thread, each batch a short transaction with the run's
lock and statement timeouts, transient errors retried with jitter on a fresh connection.

Nothing lives in a session (no session lock, no session setting, nothing prepared), so any
transaction may run on any server connection of a pooler. Opening the main thread's connection
goes through the `opener` (which checks the install); workers just reconnect."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from profileguard.backfill.model import Options
from profileguard.config import Settings
from profileguard.db import connect, connection_lost, is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")

TIMEOUT_SQLSTATES = frozenset({"55P03", "57014"})
# Transient errors retried per batch before the run stops (it stays resumable).
TRANSIENT_ATTEMPTS = 8


class BatchTimeout(Exception):
    """A batch hit lock_timeout or statement_timeout: retry it smaller."""


def is_retryable(exc: psycopg.Error) -> bool:
    """Transient, a timeout, or no SQLSTATE (the connection broke): not the batch's fault."""
    return is_transient(exc) or exc.sqlstate in TIMEOUT_SQLSTATES or exc.sqlstate is None


def jitter(stop_event: threading.Event, attempt: int) -> None:
    """Wait a full-jitter backoff for `attempt` (interruptibly)."""
    stop_event.wait(random.uniform(0, min(5.0, 0.05 * 2**attempt)))


class Connections:
    """One connection per thread; `queries` are the run's named queries (set by the opener)."""

    def __init__(
        self,
        settings: Settings,
        options: Options,
        stop_event: threading.Event,
        opener: Callable[[psycopg.Connection], None],
    ):
        self.settings = settings
        self.options = options
        self.stop_event = stop_event
        self.queries: dict[str, sql.Composed] = {}
        self._opener = opener
        self._local = threading.local()
        self._main = threading.get_ident()
        self._workers: list[psycopg.Connection] = []
        self._workers_lock = threading.Lock()

    def q(self, name: str) -> sql.Composed:
        return self.queries[name]

    @property
    def current(self) -> psycopg.Connection | None:
        """This thread's connection, if it has one."""
        conn: psycopg.Connection | None = getattr(self._local, "conn", None)
        return conn

    def forget(self, *, lost: bool = False) -> None:
        """Drop this thread's connection if it is broken or closed, or `lost` (an error said it
        can no longer be trusted); the next use reconnects."""
        conn = self.current
        if conn is not None and (lost or conn.broken or conn.closed):
            with contextlib.suppress(psycopg.Error):
                conn.close()
            self._local.conn = None

    def open_main(self) -> psycopg.Connection:
        """Connect the main thread and hand the connection to the opener (the install check)."""
        conn = connect(self.settings, autocommit=True)
        try:
            self._opener(conn)
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        return conn

    def get(self) -> psycopg.Connection:
        """This thread's connection, (re)connected when needed."""
        conn = self.current
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            self._local.conn = None
            if threading.get_ident() == self._main:
                return self.open_main()
            conn = connect(self.settings, autocommit=True)
            with self._workers_lock:
                self._workers.append(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close every connection."""
        with self._workers_lock:
            workers, self._workers = self._workers, []
        conn, self._local.conn = self.current, None
        for each in [*workers, *([conn] if conn is not None else [])]:
            with contextlib.suppress(psycopg.Error):
                each.close()

    @contextlib.contextmanager
    def transaction(self, *, rollback: bool = False) -> Iterator[psycopg.Connection]:
        """One batch transaction with this run's lock and statement timeouts."""
        conn = self.get()
        with conn.transaction():
            conn.execute(
                self.q("timeouts"),
                {
                    "lock_timeout": f"{int(self.options.lock_timeout * 1000)}ms",
                    "statement_timeout": f"{int(self.options.statement_timeout * 1000)}ms",
                },
            )
            yield conn
            if rollback:
                raise psycopg.Rollback()

    def retrying(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args); transient errors (not timeouts) retry with full jitter, reconnecting.
        Timeouts become BatchTimeout (the caller makes the batch smaller)."""
        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                return fn(*args)
            except psycopg.Error as exc:
                if exc.sqlstate in TIMEOUT_SQLSTATES:
                    # The primary message only: the context would print the whole statement.
                    reason = exc.diag.message_primary or exc.sqlstate
                    raise BatchTimeout(f"{reason}, SQLSTATE {exc.sqlstate}") from exc
                if not is_transient(exc) or attempt == TRANSIENT_ATTEMPTS - 1:
                    raise
                log.warning("transient error, retrying: %s", exc)
                self.forget(lost=connection_lost(exc))
                jitter(self.stop_event, attempt)
        raise AssertionError("unreachable")

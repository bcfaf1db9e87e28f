"""The lease that makes a run the only one: its row in profileguard.backfill_runs names its
holder (`owner`, host:pid:token) and the holder renews `heartbeat_at` every BEAT_SECONDS on a
connection of its own. No lock outlives a transaction, so nothing stays behind on a pooler's
server connection, and a run whose holder is gone is recognised and taken over: at once when
the holder was a process of this host that has ended, else once its heartbeat is older than the
lease."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid

import psycopg
from psycopg import sql

from profileguard.backfill.model import Options
from profileguard.config import Settings
from profileguard.db import connect
from profileguard.errors import ProfileGuardError

log = logging.getLogger(__name__)

# A run whose holder has not renewed its lease for this long (or for 4 statement timeouts, if
# longer: a heartbeat may wait behind a batch's row lock) has lost its process.
LEASE_SECONDS = 120.0
# How often the holder renews its lease.
BEAT_SECONDS = 5.0
APPLICATION_NAME = "profileguard-backfill"

# The holders of this process whose runs are going on (a run in another thread is alive).
_held: set[str] = set()
_held_lock = threading.Lock()


def lease_seconds(options: Options) -> float:
    """How long a run stays its holder's without a heartbeat."""
    return max(LEASE_SECONDS, 4 * options.statement_timeout)


def holder() -> str:
    """A new holder name: this host and process, and a token of its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def hold(owner: str) -> None:
    """`owner` is a run of this process going on (until `release`)."""
    with _held_lock:
        _held.add(owner)


def release(owner: str) -> None:
    with _held_lock:
        _held.discard(owner)


def gone(owner: str | None) -> bool:
    """True when `owner` names a process of this host that has ended (its run may be taken over
    at once). False when it may be alive or runs on another host: then only its heartbeat
    tells. (A pid used again by an unrelated process only delays a takeover to the lease.)"""
    parts = (owner or "").split(":")
    if len(parts) not in (2, 3) or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        with _held_lock:
            return owner not in _held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's, say)
        return False
    return False


class Heartbeat:
    """Renews a run's lease every BEAT_SECONDS from a thread of its own, on a connection of its
    own, whatever the batches are doing (a batch may wait on a lock or be retried for minutes).
    Stops when the run is no longer its holder's (taken over, ended); the run's next checkpoint
    then stops it."""

    def __init__(self, settings: Settings, query: sql.Composed, run_id: int, owner: str):
        self.settings = settings
        self.query = query
        self.params = {"id": run_id, "owner": owner}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"backfill-heartbeat-{run_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.wait(BEAT_SECONDS):
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = connect(
                            self.settings, autocommit=True, application_name=APPLICATION_NAME
                        )
                    if not self._beat(conn):
                        log.warning(
                            "backfill #%s is no longer this process's run (taken over?)",
                            self.params["id"],
                        )
                        return
                except (psycopg.Error, ProfileGuardError) as exc:
                    # The next beat tries again (on a new connection if this one broke).
                    log.info("backfill #%s heartbeat: %s", self.params["id"], exc)
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def _beat(self, conn: psycopg.Connection) -> bool:
        with conn.transaction():
            timeout = f"{int(BEAT_SECONDS * 1000)}ms"
            conn.execute(
                "select pg_catalog.set_config('lock_timeout', %(t)s, true),"
                " pg_catalog.set_config('statement_timeout', %(t)s, true)",
                {"t": timeout},
            )
            return conn.execute(self.query, self.params).fetchone() is not None

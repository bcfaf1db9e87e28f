"""The run registry, `profileguard.backfill_runs`: one backfill at a time (a session advisory
lock, or behind a transaction-mode pooler a claim under a transaction lock plus a lease), a run
started or resumed, its checkpoint after every batch, and its end state."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import psycopg
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.backfill.connections import Connections
from profileguard.backfill.model import (
    BackfillBusyError,
    BackfillStoppedError,
    Batch,
    Options,
    Report,
)
from profileguard.config import Settings, TableRef
from profileguard.db import connect
from profileguard.errors import ConfigError, NotInstalledError, ProfileGuardError
from profileguard.installation import Installation, require_current

log = logging.getLogger(__name__)

QUERIES = "queries/backfill.sql"
# Behind a transaction-mode pooler, a 'running' run that has not checkpointed for this long (or
# for 4 statement timeouts, if longer) has lost its process.
LEASE_SECONDS = 120.0


@dataclass(frozen=True)
class Start:
    """Where the run's catch-up starts from: the oldest transaction running when the run began
    (as text, an xid) and the identity table's file node then (a rewrite changes it)."""

    since: str | None
    heap_file: int | None


def _kind(dry_run: bool) -> str:
    return "dry run" if dry_run else "backfill"


def _again(dry_run: bool) -> str:
    return "profileguard backfill" + (" --dry-run" if dry_run else "")


class Registry:
    """The run's row in profileguard.backfill_runs and the lock that makes it the only one."""

    def __init__(self, settings: Settings, options: Options):
        self.settings = settings
        self.options = options
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.identity: TableRef | None = None
        self.db: Connections | None = None
        # Up to when the run's elapsed time is saved (monotonic).
        self.mark = time.monotonic()

    @property
    def _db(self) -> Connections:
        assert self.db is not None
        return self.db

    def _q(self, name: str) -> sql.Composed:
        return self._db.q(name)

    # ---------------------------------------------------------------- install and lock

    def open(self, conn: psycopg.Connection) -> None:
        """A new main connection: check the install, prepare the queries, take the lock."""
        self._check_installed(conn)
        if not self.settings.transaction_pooler:
            row = conn.execute(self._q("try_lock")).fetchone()
            if not (row and row[0]):
                self._busy(conn.execute(self._q("running")).fetchone())

    def unlock(self, conn: psycopg.Connection) -> None:
        if not self.settings.transaction_pooler and self._db.queries:
            conn.execute(self._q("unlock"))

    def _check_installed(self, conn: psycopg.Connection) -> None:
        require_current(conn, missing="the backfill")
        installed = Installation.require(conn)
        profile = installed.profile
        if (str(profile), profile.key) != (str(self.settings.profile), self.settings.profile.key):
            raise ConfigError(
                f"profileguard is installed for profile table {profile} (key {profile.key}), "
                f"but the configuration names {self.settings.profile} "
                f"(key {self.settings.profile.key})",
                hint="run: profileguard install (to switch to the configured table), or set "
                f"profile.table = '{profile}' in profileguard.toml",
            )
        installed.require_key_type()
        pages = conn.execute(
            sqlfiles.query("function_exists"),
            {"signature": "profileguard.backfill_pages(bigint, bigint, bigint, xid, boolean)"},
        ).fetchone()
        if not (pages and pages[0]):
            raise NotInstalledError(
                "the installed profileguard functions predate the backfill",
                hint="run: profileguard upgrade",
            )
        self.identity = installed.identity
        parts = installed.parts()
        self._db.queries = {
            name: sql.SQL(text).format(**parts) for name, text in sqlfiles.queries(QUERIES).items()
        }

    @contextlib.contextmanager
    def claim(self, conn: psycopg.Connection) -> Iterator[None]:
        """Behind a transaction-mode pooler: start or resume the run in one transaction that
        holds a transaction lock and finds no live run (elsewhere the session lock is held)."""
        if not self.settings.transaction_pooler:
            yield
            return
        lease = max(LEASE_SECONDS, 4 * self.options.statement_timeout)
        with conn.transaction():
            conn.execute(self._q("xact_lock"))
            live = conn.execute(self._q("live_run"), {"lease": lease}).fetchone()
            if live is not None:
                self._busy(live)
            yield

    def beat(self, report: Report) -> Callable[[], None] | None:
        """Behind a transaction-mode pooler: renews the run's lease during throttle waits."""
        if not self.settings.transaction_pooler:
            return None

        def touch() -> None:
            self._db.retrying(
                lambda: self._db.get().execute(self._q("touch"), {"id": report.run_id})
            )

        return touch

    def _busy(self, running: Any) -> NoReturn:
        if running:
            run_id, owner, started, updated, scanned, _cursor, dry = running
            message = (
                f"another backfill is running: {_kind(dry)} #{run_id} owned by {owner}, started "
                f"{started:%Y-%m-%d %H:%M:%S %Z}, {scanned} users scanned, last checkpoint "
                f"{updated:%H:%M:%S}"
            )
        else:
            message = "another backfill is running (it holds the backfill lock)"
        raise BackfillBusyError(
            message,
            hint="wait for it to finish, or stop it (Ctrl-C or SIGTERM) and run: "
            "profileguard backfill --resume",
        )

    # ---------------------------------------------------------------- start, resume

    def begin(self, conn: psycopg.Connection, batch_size: int) -> tuple[Report, Start]:
        """Start a run, or claim the latest unfinished one with --resume."""
        abandoned = [r[0] for r in conn.execute(self._q("mark_abandoned")).fetchall()]
        if abandoned:
            log.info("backfill runs %s had lost their process; marked interrupted", abandoned)
        total = self._estimate(conn)
        if self.options.resume:
            return self._resume(conn, total, batch_size)
        options = self.options
        row = conn.execute(
            self._q("start"),
            {
                "dry_run": options.dry_run,
                "total": total,
                "batch_size": batch_size,
                "owner": self.owner,
                "detail": json.dumps({"options": asdict(options)}),
                "table": str(self.identity),
            },
        ).fetchone()
        assert row is not None
        report = Report(
            run_id=int(row[0]),
            state="running",
            dry_run=options.dry_run,
            resumed=False,
            batch_size=batch_size,
            total_estimate=total,
        )
        return report, Start(str(row[1]), int(row[2]))

    def _resume(
        self, conn: psycopg.Connection, total: int, batch_size: int
    ) -> tuple[Report, Start]:
        dry = self.options.dry_run
        row = conn.execute(self._q("latest"), {"dry_run": dry}).fetchone()
        if row is None:
            raise ProfileGuardError(f"no {_kind(dry)} to resume", hint=f"run: {_again(dry)}")
        (
            run_id,
            state,
            cursor,
            scanned,
            created,
            failed,
            quarantined,
            batches,
            size,
            elapsed,
            estimate,
            ordering,
            phase,
            since_xid,
            heap_file,
        ) = row
        if state == "completed":
            raise ProfileGuardError(
                f"the last {_kind(dry)} (#{run_id}) completed; nothing to resume",
                hint=f"run: {_again(dry)}",
            )
        if ordering != "pages":
            raise ProfileGuardError(
                f"{_kind(dry)} #{run_id} was started by a development version of profileguard "
                "that walked users in key order; it cannot be resumed",
                hint=f"start a new run (users that have a profile are skipped): {_again(dry)}",
            )
        conn.execute(self._q("claim"), {"owner": self.owner, "total": total, "id": run_id})
        if self.options.batch_size is None and size:
            batch_size = min(
                max(int(size), self.options.min_batch_size), self.options.max_batch_size
            )
        report = Report(
            run_id=int(run_id),
            state="running",
            dry_run=dry,
            resumed=True,
            scanned=int(scanned),
            created=int(created),
            failed=int(failed),
            quarantined=int(quarantined),
            batches=int(batches),
            duration=float(elapsed),
            batch_size=batch_size,
            total_estimate=max(total, int(estimate or 0)),
            cursor=cursor,
            phase=phase,
        )
        start = Start(
            None if since_xid is None else str(since_xid),
            None if heap_file is None else int(heap_file),
        )
        return report, start

    def _estimate(self, conn: psycopg.Connection) -> int:
        row = conn.execute(self._q("estimate"), {"table": str(self.identity)}).fetchone()
        estimate = int(row[0]) if row and row[0] else 0
        if estimate <= 0:
            row = conn.execute(self._q("count")).fetchone()
            estimate = int(row[0]) if row else 0
        return estimate

    # ---------------------------------------------------------------- checkpoint and end

    def checkpoint(
        self, conn: psycopg.Connection, batch: Batch, report: Report, batch_size: int
    ) -> None:
        """After a batch, in page order: the resume point and the counters. `created` of a real
        run was added by the batch's own transaction (backfill_pages), so it is 0 here."""
        now = time.monotonic()
        elapsed, self.mark = now - self.mark, now
        row = conn.execute(
            self._q("checkpoint"),
            {
                "id": report.run_id,
                "cursor": str(batch.last),
                "scanned": batch.scanned,
                "created": batch.created if self.options.dry_run else 0,
                "failed": batch.failed,
                "quarantined": batch.quarantined,
                "batch_size": batch_size,
                "elapsed": elapsed,
            },
        ).fetchone()
        if row is None:
            raise BackfillStoppedError(
                f"backfill #{report.run_id} stopped: its record is gone from "
                "profileguard.backfill_runs (profileguard was uninstalled and installed again "
                "during the run?)",
                hint="run: profileguard backfill (a new run; users that have a profile are "
                "skipped)",
            )

    def set_phase(self, conn: psycopg.Connection, report: Report, phase: str) -> None:
        conn.execute(self._q("set_phase"), {"id": report.run_id, "phase": phase})

    def settle(self) -> None:
        """A run completed: probe the repair engine's breakers (a fault fixed before --resume
        closes) and drop the repair state of users who have their profile now. Best effort."""
        try:
            with self._db.transaction() as conn:
                conn.execute(self._q("settle_breakers"))
                conn.execute(self._q("forget_repaired"))
        except psycopg.Error as exc:
            log.info("could not settle the repair state after the backfill: %s", exc)
            self._db.forget()

    def finish(self, report: Report, state: str, detail: dict[str, Any]) -> None:
        """Record the end state and read the run's totals back (best effort: on a broken
        connection, on a new one)."""
        detail = {"owner": self.owner, **detail}
        elapsed = time.monotonic() - self.mark

        def finish(conn: psycopg.Connection) -> None:
            row = conn.execute(
                self._q("finish"),
                {
                    "id": report.run_id,
                    "state": state,
                    "elapsed": elapsed,
                    "detail": json.dumps(detail, default=str),
                },
            ).fetchone()
            if row:
                (
                    report.scanned,
                    report.created,
                    report.failed,
                    report.quarantined,
                    report.batches,
                ) = (int(v) for v in row[:5])
                report.duration, report.cursor = float(row[5]), row[6]

        try:
            conn = self._db.current
            if conn is not None and not conn.broken and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.rollback()
                finish(conn)
            else:
                with connect(self.settings, autocommit=True) as fresh:
                    finish(fresh)
        except (psycopg.Error, ProfileGuardError) as exc:
            log.warning("could not record the end of backfill #%s: %s", report.run_id, exc)

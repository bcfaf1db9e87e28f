"""The run registry, `profileguard.backfill_runs`: one backfill at a time (a run claimed in one
transaction under a transaction lock, then held by its lease: see lease.py), a run started or
resumed, its checkpoint after every batch, and its end state. Nothing is kept in the session, so
the same holds through a transaction-mode pooler, told or not."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import psycopg
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.backfill import lease
from profileguard.backfill.connections import Connections
from profileguard.backfill.model import (
    BackfillBusyError,
    BackfillStoppedError,
    Batch,
    Options,
    Report,
)
from profileguard.config import Settings, TableRef
from profileguard.db import connect, connection_lost
from profileguard.errors import ConfigError, NotInstalledError, ProfileGuardError
from profileguard.installation import Installation, require_current

log = logging.getLogger(__name__)

QUERIES = "queries/backfill.sql"


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
    """The run's row in profileguard.backfill_runs and the lease that makes it the only one."""

    def __init__(self, settings: Settings, options: Options):
        self.settings = settings
        self.options = options
        self.owner = lease.holder()
        self.identity: TableRef | None = None
        self.db: Connections | None = None
        self.heartbeat: lease.Heartbeat | None = None
        # Up to when the run's elapsed time is saved (monotonic).
        self.mark = time.monotonic()

    @property
    def _db(self) -> Connections:
        assert self.db is not None
        return self.db

    def _q(self, name: str) -> sql.Composed:
        return self._db.q(name)

    # ---------------------------------------------------------------- install and lease

    def open(self, conn: psycopg.Connection) -> None:
        """A new main connection: check the install and prepare the queries."""
        self._check_installed(conn)

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
        leased = conn.execute(self._q("has_heartbeat")).fetchone()
        if not (leased and leased[0]):
            raise NotInstalledError(
                "the installed profileguard schema predates the backfill's lease "
                "(profileguard.backfill_runs.heartbeat_at)",
                hint="run: profileguard upgrade",
            )

    @contextlib.contextmanager
    def claim(self, conn: psycopg.Connection) -> Iterator[None]:
        """Start or resume the run in one transaction that holds the claim lock and finds no
        live run: one whose holder renewed its lease within it and is not known to be gone.
        Runs whose holder is gone are marked interrupted (taken over)."""
        lease.hold(self.owner)
        window = lease.lease_seconds(self.options)
        try:
            with conn.transaction():
                conn.execute(self._q("claim_lock"))
                running = conn.execute(self._q("running")).fetchall()
                for run in running:
                    silent = float(run[6])
                    if silent < window and not lease.gone(run[1]):
                        self._busy(run, silent, window)
                abandoned = [r[0] for r in running]
                if abandoned:
                    conn.execute(self._q("mark_abandoned"), {"ids": abandoned, "owner": self.owner})
                    log.info("backfill runs %s had lost their process; taken over", abandoned)
                yield
        except BaseException:
            lease.release(self.owner)
            raise

    def hold(self, report: Report) -> None:
        """The run is ours: renew its lease until `release`."""
        self.heartbeat = lease.Heartbeat(
            self.settings, self._q("heartbeat"), report.run_id, self.owner
        )
        self.heartbeat.start()

    def release(self) -> None:
        """Stop renewing the lease (the end state is recorded, or the run is no longer ours)."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        lease.release(self.owner)

    def _busy(self, running: Any, silent: float, window: float) -> NoReturn:
        run_id, owner, started, updated, scanned, dry, _ = running
        raise BackfillBusyError(
            f"another backfill is running: {_kind(dry)} #{run_id} owned by {owner}, started "
            f"{started:%Y-%m-%d %H:%M:%S %Z}, {scanned} users scanned, last checkpoint "
            f"{updated:%H:%M:%S}, last heartbeat {silent:.0f} s ago",
            hint="wait for it to finish, or stop it (Ctrl-C or SIGTERM) and run: "
            f"profileguard backfill --resume (a run whose process died is taken over at once "
            f"from its own host, from elsewhere once its heartbeat is {window:.0f} s old)",
        )

    # ---------------------------------------------------------------- start, resume

    def begin(self, conn: psycopg.Connection, batch_size: int) -> tuple[Report, Start]:
        """Start a run, or claim the latest unfinished one with --resume (under `claim`)."""
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
                "owner": self.owner,
            },
        ).fetchone()
        if row is None:
            self._lost(conn, report)

    def _lost(self, conn: psycopg.Connection, report: Report) -> NoReturn:
        """The run's row is gone, or no longer this holder's: stop."""
        row = conn.execute(self._q("holder"), {"id": report.run_id}).fetchone()
        if row is None:
            raise BackfillStoppedError(
                f"backfill #{report.run_id} stopped: its record is gone from "
                "profileguard.backfill_runs (profileguard was uninstalled and installed again "
                "during the run?)",
                hint="run: profileguard backfill (a new run; users that have a profile are "
                "skipped)",
            )
        state, owner, taken_by = row
        by = owner if state == "running" else taken_by or "another backfill"
        raise BackfillStoppedError(
            f"backfill #{report.run_id} stopped: {by} took it over (its lease had run out: no "
            f"heartbeat for {lease.lease_seconds(self.options):.0f} s)",
            hint="nothing to do: the run that took over goes on (profileguard status shows it); "
            "if it has ended, run: profileguard backfill --resume",
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
            self._db.forget(lost=connection_lost(exc))

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
                    "owner": self.owner,
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

"""One backfill run from start (or resume) to its end state: the scan, then the catch-up, each
batch checkpointed in page order, the profile table analyzed as it grows."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from profileguard.backfill import faults
from profileguard.backfill.connections import Connections
from profileguard.backfill.handoff import Handoff
from profileguard.backfill.model import BackfillStoppedError, Batch, Options, Progress, Report
from profileguard.backfill.registry import Registry, Start
from profileguard.backfill.scan import Pass, Scan
from profileguard.backfill.sizing import Sizer
from profileguard.config import Settings
from profileguard.db import connection_lost, translate

log = logging.getLogger(__name__)

# ANALYZE the profile table once this many profiles were created, then each time the number
# created by this run grows ANALYZE_GROWTH times (a handful of times per run, each ~0.1 s).
ANALYZE_FIRST = 10_000
ANALYZE_GROWTH = 4


class Backfill:
    """One backfill run; `run()` does it and returns the Report."""

    def __init__(
        self,
        settings: Settings,
        options: Options | None = None,
        *,
        progress: Callable[[Progress], None] | None = None,
        stop_event: threading.Event | None = None,
    ):
        self.settings = settings
        self.options = options or Options()
        self.options.check()
        self.progress = progress
        self.stop_event = stop_event or threading.Event()
        self.registry = Registry(settings, self.options)
        self.db = Connections(settings, self.options, self.stop_event, self.registry.open)
        self.registry.db = self.db
        self.sizer = Sizer(self.options)
        # When this invocation began (monotonic), and the ANALYZE schedule.
        self._started = time.monotonic()
        self._created_here = 0
        self._analyze_at = ANALYZE_FIRST

    def run(self) -> Report:
        """Do the backfill (or resume it); returns the report. Raises BackfillBusyError when
        another one runs, NotInstalledError when profileguard is missing."""
        self._started = time.monotonic()
        try:
            conn = self.db.open_main()
            with self.registry.claim(conn):
                report, start = self.registry.begin(conn, self.sizer.size)
            self.registry.hold(report)
        except psycopg.Error as exc:
            self.registry.release()
            self.db.close()
            raise translate(exc, context="backfill") from exc
        except BaseException:
            self.registry.release()
            self.db.close()
            raise
        self.sizer.size = report.batch_size
        state = "failed"
        error: BaseException | None = None
        self.registry.mark = time.monotonic()
        try:
            self._phases(report, start)
            state = "interrupted" if self.stop_event.is_set() else "completed"
        except KeyboardInterrupt:
            # A second Ctrl-C (or one outside the CLI): stop now; the checkpoint stays valid.
            state = "interrupted"
        except BaseException as exc:
            error = faults.from_error(exc, report.run_id) or exc
        finally:
            self._finish(report, state, error)
        if error is not None:
            if isinstance(error, BackfillStoppedError):
                error.report = report
            if isinstance(error, psycopg.Error):
                raise translate(error, context="backfill") from error
            raise error
        return report

    def _phases(self, report: Report, start: Start) -> None:
        """The scan over the heap pages from the cursor, then the catch-up over the rows
        written since the run began (every row if the table was rewritten meanwhile)."""
        assert self.registry.identity is not None
        scan = Scan(
            self.db, self.options, self.sizer, report, self.stop_event, str(self.registry.identity)
        )
        scan.failed = Handoff(scan)
        _, heap_file, per_page = self.db.retrying(scan.heap)
        self.sizer.per_page = per_page or 50.0
        if report.phase != "catchup":
            scan.walk(Pass(), lambda b, p: self._done(report, b, p, False))
            if self.stop_event.is_set() or self.options.dry_run:
                return
            self.db.retrying(self._set_phase, report, "catchup")
            report.phase, report.cursor = "catchup", None
        _, heap_file, _ = self.db.retrying(scan.heap)
        all_rows = start.heap_file is None or heap_file != start.heap_file
        if all_rows:
            log.warning(
                "the users table was rewritten during the run; the catch-up reads every row"
            )
        walk = Pass(catchup=True, since=None if all_rows else start.since, all_rows=all_rows)
        scan.walk(walk, lambda b, p: self._done(report, b, p, True))

    def _set_phase(self, report: Report, phase: str) -> None:
        with self.db.transaction() as conn:
            self.registry.set_phase(conn, report, phase)

    def _done(self, report: Report, batch: Batch, pages: int, catchup: bool) -> None:
        """A batch is done (in page order): checkpoint, count, adapt, report progress."""
        self.db.retrying(self._checkpoint, batch, report)
        report.add(batch, self.sizer.size)
        self.sizer.adapt(batch, pages, catchup)
        self._maybe_analyze(batch)
        if self.progress is not None:
            self.progress(self._snapshot(report))

    def _checkpoint(self, batch: Batch, report: Report) -> None:
        with self.db.transaction() as conn:
            self.registry.checkpoint(conn, batch, report, self.sizer.size)

    def _maybe_analyze(self, batch: Batch) -> None:
        """ANALYZE the profile table as it grows (see ANALYZE_FIRST); best effort."""
        if self.options.dry_run:
            return
        self._created_here += batch.created
        if self._created_here < self._analyze_at:
            return
        self._analyze_at = ANALYZE_GROWTH * self._created_here
        try:
            self.db.get().execute(self.db.q("analyze_profile"))
        except psycopg.Error as exc:
            log.info("could not analyze the profile table: %s", exc)
            self.db.forget(lost=connection_lost(exc))

    def _snapshot(self, report: Report) -> Progress:
        elapsed = report.duration + (time.monotonic() - self._started)
        return Progress(
            run_id=report.run_id,
            dry_run=report.dry_run,
            scanned=report.scanned,
            created=report.created,
            failed=report.failed,
            quarantined=report.quarantined,
            batches=report.batches,
            batch_size=self.sizer.size,
            total_estimate=max(report.total_estimate, report.scanned),
            elapsed=elapsed,
            rows_per_second=report.scanned / elapsed if elapsed > 0 else 0.0,
        )

    def _finish(self, report: Report, state: str, error: BaseException | None) -> None:
        """Record the end state, then close every connection."""
        detail: dict[str, Any] = {}
        if error is not None and not isinstance(error, KeyboardInterrupt):
            detail["error"] = str(error)[:2000]
            detail["sqlstate"] = getattr(error, "sqlstate", None)
            detail["stopped"] = isinstance(error, BackfillStoppedError)
        try:
            if state == "completed" and not self.options.dry_run:
                self.registry.settle()
        finally:
            self.registry.release()
        try:
            self.registry.finish(report, state, detail)
        finally:
            self.db.close()
        report.state = state
        report.already_present = max(0, report.scanned - report.created - report.failed)
        report.rows_per_second = report.scanned / report.duration if report.duration > 0 else 0.0


def run_backfill(
    settings: Settings,
    options: Options | None = None,
    *,
    progress: Callable[[Progress], None] | None = None,
    stop_event: threading.Event | None = None,
) -> Report:
    """Run (or resume) a backfill; see `Backfill`."""
    return Backfill(settings, options, progress=progress, stop_event=stop_event).run()

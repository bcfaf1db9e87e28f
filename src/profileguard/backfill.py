"""The backfill: create the missing profiles of existing users, fast, safely and resumably.

The identity table is read in physical order: each batch is a range of heap pages (a TID range
scan) done server-side by `profileguard.backfill_pages(first, last, run)`, one INSERT … SELECT …
ON CONFLICT DO NOTHING with the installed mapping, in its own short transaction with
`lock_timeout` and `statement_timeout`. No list of ids ever reaches Python, so memory stays flat.
Reading pages in order is what one bulk statement does; walking keys (random UUIDs) would touch
heap pages all over the table.

Guarantee: when a run completes, every user that existed when it started and still exists has a
profile (or is recorded as failed). A page sweep alone could miss users whose row moved while it
ran (an UPDATE can put the new version on a page already done), so the sweep is followed by a
catch-up over the pages again that takes only the rows written since the run began (xmin not
older than the oldest transaction running at its start; the others cannot have moved). If the
table was rewritten meanwhile (VACUUM FULL, CLUSTER: its file node changed), the catch-up takes
every row. Users who sign up during the run are the trigger's (and the reconciler's) job; the
catch-up includes those it sees, which is harmless (ON CONFLICT, one profile each). A dry run does
no catch-up.

The batch size adapts toward a target duration (in rows, turned into pages with the rows per page
observed). A batch that fails with a permanent error is split in halves down to single pages, and
a failing page is done user by user, so the failing users are isolated; they are recorded and
quarantined in `profileguard.repair_state` (shared with the reconciler) and the rest proceed. The
run, its phase and its cursor (the page reached) are checkpointed in `profileguard.backfill_runs`
after every batch, so a killed run resumes where it stopped without rescanning or duplicating. A
run started by a version that walked keys (`ordering` 'key') resumes by key. A session-level
advisory lock lets one backfill run at a time; behind a transaction-mode pooler (setting
`pooler = "transaction"`), where no lock outlives a transaction, a run is claimed under a
transaction lock instead and counts as alive while it checkpointed within a lease.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn, TypeVar

import psycopg
from psycopg import sql

from profileguard import repairs
from profileguard import sql as sqlfiles
from profileguard.config import Settings
from profileguard.db import connect, is_transient, translate
from profileguard.errors import ConfigError, NotInstalledError, ProfileGuardError
from profileguard.installation import Installation, require_version

log = logging.getLogger(__name__)
T = TypeVar("T")

QUERIES = "backfill.sql"
SOURCE = "backfill"
# Schema version that added profileguard.backfill_runs.
SCHEMA_VERSION = 3
# Schema version that added the physical-order columns of profileguard.backfill_runs.
PAGES_VERSION = 6
TIMEOUT_SQLSTATES = frozenset({"55P03", "57014"})
# Failed users listed in the report (all are recorded in the database).
FAILURE_LIST_LIMIT = 100
# Transient errors retried per batch before the run stops (it stays resumable).
TRANSIENT_ATTEMPTS = 8
# Never grow or shrink the batch size by more than this factor per batch.
ADAPT_FACTOR = 2.0
# ANALYZE the profile table once this many profiles were created, then each time the number
# created by this run grows ANALYZE_GROWTH times (a handful of times per run, each ~0.1 s).
ANALYZE_FIRST = 10_000
ANALYZE_GROWTH = 4
# Behind a transaction-mode pooler, a 'running' run that has not checkpointed for this long (or
# for 4 statement timeouts, if longer) has lost its process.
LEASE_SECONDS = 120.0
BEAT_SECONDS = 30.0


class BackfillBusyError(ProfileGuardError):
    """Another backfill holds the lock."""


@dataclass(frozen=True)
class Options:
    """How a backfill runs; `batch_size` None means the resumed run's last size (or 1,000)."""

    dry_run: bool = False
    resume: bool = False
    batch_size: int | None = None
    min_batch_size: int = 100
    max_batch_size: int = 100_000
    target_seconds: float = 0.5
    max_rows_per_second: float | None = None
    lock_timeout: float = 2.0
    statement_timeout: float = 30.0
    sample: int = 10
    # Connections inserting ranges at once (the lock and checkpoints stay on one more). Two by
    # default: one connection reaches ~0.8x the rows/s of a single bulk statement (each new row
    # probes the growing profile table's username index, which a statement over an empty table
    # does not), two reach it; --workers 1 is the lightest on the database.
    workers: int = 2

    def check(self) -> None:
        """Raise ConfigError on values that cannot work."""
        problems = []
        if self.min_batch_size < 1:
            problems.append("--min-batch-size must be at least 1")
        if self.max_batch_size < self.min_batch_size:
            problems.append("--max-batch-size must be at least --min-batch-size")
        if self.batch_size is not None and not (
            self.min_batch_size <= self.batch_size <= self.max_batch_size
        ):
            problems.append("--batch-size must be between --min-batch-size and --max-batch-size")
        if self.target_seconds <= 0:
            problems.append("--target-seconds must be positive")
        if self.max_rows_per_second is not None and self.max_rows_per_second <= 0:
            problems.append("--max-rows-per-second must be positive")
        if self.lock_timeout <= 0 or self.statement_timeout <= 0:
            problems.append("--lock-timeout and --statement-timeout must be positive")
        if self.sample < 0:
            problems.append("--sample must be 0 or more")
        if not 1 <= self.workers <= 16:
            problems.append("--workers must be between 1 and 16")
        if problems:
            raise ConfigError("; ".join(problems), hint="fix the option and run the command again")


@dataclass
class Progress:
    """A snapshot of a run, passed to the progress callback after every batch."""

    run_id: int
    dry_run: bool
    scanned: int
    created: int
    failed: int
    quarantined: int
    batches: int
    batch_size: int
    total_estimate: int
    elapsed: float
    rows_per_second: float


@dataclass
class Report:
    """What a run did (the whole run, across resumes)."""

    run_id: int
    state: str
    dry_run: bool
    resumed: bool
    scanned: int = 0
    created: int = 0
    already_present: int = 0
    failed: int = 0
    quarantined: int = 0
    batches: int = 0
    duration: float = 0.0
    rows_per_second: float = 0.0
    batch_size: int = 0
    total_estimate: int = 0
    cursor: str | None = None
    # 'pages' (physical order, then a catch-up) or 'key' (a run started by an older version).
    ordering: str = "pages"
    phase: str | None = "sweep"
    failures: list[dict[str, Any]] = field(default_factory=list)
    failures_truncated: bool = False
    sample: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = round(self.duration, 3)
        data["rows_per_second"] = round(self.rows_per_second, 1)
        if self.dry_run:
            data["would_create"] = self.created
            data["would_fail"] = self.failed
        else:
            data.pop("sample")
        return data


class _Timeout(Exception):
    """A batch hit lock_timeout or statement_timeout: retry it smaller."""


class _Failed(Exception):
    """A batch failed with a permanent error; its range is split to isolate the bad rows."""

    def __init__(self, first: Any, last: Any, count: int, error: psycopg.Error):
        super().__init__(str(error))
        self.first, self.last, self.count, self.error = first, last, count, error


@dataclass
class _Batch:
    first: Any = None
    last: Any = None
    scanned: int = 0
    created: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    failures: list[repairs.Failure] = field(default_factory=list)


class _Throttle:
    """Holds a run to --max-rows-per-second: after each batch, waits (interruptibly) for as long
    as the rows done so far are ahead of the rate. `beat`, if given, is called at least every
    BEAT_SECONDS of a long wait (it renews the run's lease behind a transaction-mode pooler)."""

    def __init__(self, rate: float | None, stop_event: threading.Event,
                 beat: Callable[[], None] | None = None):
        self.rate = rate
        self.stop_event = stop_event
        self.beat = beat
        self.rows = 0
        self.started = time.monotonic()

    def account(self, rows: int) -> None:
        if self.rate is None:
            return
        self.rows += rows
        ahead = self.rows / self.rate - (time.monotonic() - self.started)
        while ahead > 0 and not self.stop_event.wait(min(ahead, BEAT_SECONDS)):
            ahead = self.rows / self.rate - (time.monotonic() - self.started)
            if ahead > 0 and self.beat is not None:
                self.beat()


class Backfill:
    """One backfill run on one connection; `run()` does it and returns the Report."""

    def __init__(
        self,
        settings: Settings,
        options: Options | None = None,
        *,
        progress: Callable[[Progress], None] | None = None,
        stop_event: threading.Event | None = None,
    ):
        settings.require_pooler_mode("backfill")
        self.settings = settings
        self.options = options or Options()
        self.options.check()
        self.progress = progress
        self.stop_event = stop_event or threading.Event()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        # Each thread has its own connection; the main thread's holds the lock.
        self._local = threading.local()
        self._main = threading.get_ident()
        self._worker_conns: list[psycopg.Connection] = []
        self._worker_lock = threading.Lock()
        self._queries: dict[str, sql.Composed] = {}
        self._report: Report | None = None
        self._size = self.options.batch_size or 1000
        # monotonic times: when this invocation began, and up to when elapsed time is saved.
        self._started = self._mark = time.monotonic()
        self._created_here = 0
        self._analyze_at = ANALYZE_FIRST
        # Physical order: rows per heap page (observed), pages per catch-up batch, the oldest
        # transaction running at the run's start and the table's file then (see the module).
        self._per_page = 50.0
        self._catch_pages = 1
        self._since: str | None = None
        self._heap_file: int | None = None

    # ---------------------------------------------------------------- connection and lock

    def _q(self, name: str) -> sql.Composed:
        return self._queries[name]

    @property
    def _conn(self) -> psycopg.Connection | None:
        conn: psycopg.Connection | None = getattr(self._local, "conn", None)
        return conn

    @_conn.setter
    def _conn(self, conn: psycopg.Connection | None) -> None:
        self._local.conn = conn

    def _open(self) -> psycopg.Connection:
        """Connect, take the lock, check the install and prepare the queries."""
        conn = connect(self.settings, autocommit=True)
        try:
            self._check_installed(conn)
            if not self.settings.transaction_pooler:
                self._lock(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _check_installed(self, conn: psycopg.Connection) -> None:
        version = require_version(conn, SCHEMA_VERSION, missing="backfill")
        installed = Installation.require(conn)
        identity, profile = installed.identity, installed.profile
        if (str(profile), profile.key) != (str(self.settings.profile), self.settings.profile.key):
            raise ConfigError(
                f"profileguard is installed for profile table {profile} (key {profile.key}), "
                f"but the configuration names {self.settings.profile} "
                f"(key {self.settings.profile.key})",
                hint="run: profileguard install (to switch to the configured table), or set "
                f"profile.table = '{profile}' in profileguard.toml",
            )
        key_type = installed.require_key_type()
        found = conn.execute(
            sqlfiles.query("function_exists"),
            {"signature": f"profileguard.backfill_range({key_type}, {key_type}, bigint)"},
        ).fetchone()
        pages = conn.execute(
            sqlfiles.query("function_exists"),
            {"signature": "profileguard.backfill_pages(bigint, bigint, bigint, xid, boolean)"},
        ).fetchone()
        if not (found and found[0]) or version < PAGES_VERSION or not (pages and pages[0]):
            raise NotInstalledError(
                "the installed profileguard functions predate the backfill",
                hint="run: profileguard upgrade",
            )
        self._identity = identity
        parts = installed.parts()
        self._queries = {
            name: sql.SQL(text).format(**parts)
            for name, text in sqlfiles.queries(QUERIES).items()
        }

    def _lock(self, conn: psycopg.Connection) -> None:
        row = conn.execute(self._q("try_lock")).fetchone()
        if row and row[0]:
            return
        self._busy(conn.execute(self._q("running")).fetchone())

    @contextlib.contextmanager
    def _claim(self, conn: psycopg.Connection) -> Iterator[None]:
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

    def _beat(self, report: Report) -> Callable[[], None] | None:
        """Behind a transaction-mode pooler: renews the run's lease during throttle waits."""
        if not self.settings.transaction_pooler:
            return None

        def touch() -> None:
            self._retrying(lambda: self._connection().execute(
                self._q("touch"), {"id": report.run_id}))

        return touch

    def _busy(self, running: Any) -> NoReturn:
        if running:
            run_id, owner, started, updated, scanned, _cursor, dry = running
            kind = "dry run" if dry else "backfill"
            message = (
                f"another backfill is running: {kind} #{run_id} owned by {owner}, started "
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

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            self._conn = None
            if threading.get_ident() == self._main:
                conn = self._open()
            else:
                conn = connect(self.settings, autocommit=True)
                with self._worker_lock:
                    self._worker_conns.append(conn)
                self._conn = conn
        return conn

    def _close(self) -> None:
        with self._worker_lock:
            workers, self._worker_conns = self._worker_conns, []
        for worker in workers:
            with contextlib.suppress(psycopg.Error):
                worker.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                if not conn.broken and not self.settings.transaction_pooler:
                    conn.execute(self._q("unlock"))
            with contextlib.suppress(psycopg.Error):
                conn.close()

    @contextlib.contextmanager
    def _transaction(self, *, rollback: bool = False) -> Iterator[psycopg.Connection]:
        """One batch transaction with this run's lock and statement timeouts."""
        conn = self._connection()
        with conn.transaction():
            conn.execute(
                self._q("timeouts"),
                {
                    "lock_timeout": f"{int(self.options.lock_timeout * 1000)}ms",
                    "statement_timeout": f"{int(self.options.statement_timeout * 1000)}ms",
                },
            )
            yield conn
            if rollback:
                raise psycopg.Rollback()

    def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args); transient errors (not timeouts) retry with full jitter, reconnecting."""
        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                return fn(*args)
            except psycopg.Error as exc:
                if exc.sqlstate in TIMEOUT_SQLSTATES:
                    # The primary message only: the context would print the whole statement.
                    reason = exc.diag.message_primary or exc.sqlstate
                    raise _Timeout(f"{reason}, SQLSTATE {exc.sqlstate}") from exc
                if not is_transient(exc) or attempt == TRANSIENT_ATTEMPTS - 1:
                    raise
                log.warning("transient error, retrying: %s", exc)
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._conn = None
                self.stop_event.wait(random.uniform(0, min(5.0, 0.05 * 2**attempt)))
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- the run

    def run(self) -> Report:
        """Do the backfill (or resume it); returns the report. Raises BackfillBusyError when
        another one runs, NotInstalledError when profileguard is missing."""
        self._started = time.monotonic()
        try:
            conn = self._open()
            with self._claim(conn):
                report = self._begin(conn)
        except psycopg.Error as exc:
            self._close()
            raise translate(exc, context="backfill") from exc
        except BaseException:
            self._close()
            raise
        self._report = report
        state = "failed"
        error: BaseException | None = None
        self._mark = time.monotonic()
        try:
            self._loop(report)
            state = "interrupted" if self.stop_event.is_set() else "completed"
        except KeyboardInterrupt:
            # A second Ctrl-C (or one outside the CLI): stop now; the checkpoint stays valid.
            state = "interrupted"
        except BaseException as exc:
            error = exc
        finally:
            self._finish(report, state, error)
        if error is not None:
            if isinstance(error, psycopg.Error):
                raise translate(error, context="backfill") from error
            raise error
        return report

    def _begin(self, conn: psycopg.Connection) -> Report:
        options = self.options
        abandoned = [r[0] for r in conn.execute(self._q("mark_abandoned")).fetchall()]
        if abandoned:
            log.info("backfill runs %s had lost their process; marked interrupted", abandoned)
        total = self._estimate(conn)
        if options.resume:
            row = conn.execute(self._q("latest"), {"dry_run": options.dry_run}).fetchone()
            kind = "dry run" if options.dry_run else "backfill"
            if row is None:
                raise ProfileGuardError(
                    f"no {kind} to resume", hint="run: profileguard backfill"
                    + (" --dry-run" if options.dry_run else "")
                )
            (run_id, state, cursor, scanned, created, failed, quarantined, batches, size,
             elapsed, estimate, ordering, phase, since_xid, heap_file) = row
            self._since = None if since_xid is None else str(since_xid)
            self._heap_file = None if heap_file is None else int(heap_file)
            if state == "completed":
                raise ProfileGuardError(
                    f"the last {kind} (#{run_id}) completed; nothing to resume",
                    hint="run: profileguard backfill" + (" --dry-run" if options.dry_run else ""),
                )
            conn.execute(self._q("claim"), {"owner": self.owner, "total": total, "id": run_id})
            if options.batch_size is None and size:
                self._size = min(max(int(size), options.min_batch_size), options.max_batch_size)
            return Report(
                run_id=int(run_id),
                state="running",
                dry_run=options.dry_run,
                resumed=True,
                scanned=int(scanned),
                created=int(created),
                failed=int(failed),
                quarantined=int(quarantined),
                batches=int(batches),
                duration=float(elapsed),
                batch_size=self._size,
                total_estimate=max(total, int(estimate or 0)),
                cursor=cursor,
                ordering=str(ordering),
                phase=phase,
            )
        row = conn.execute(
            self._q("start"),
            {
                "dry_run": options.dry_run,
                "total": total,
                "batch_size": self._size,
                "owner": self.owner,
                "detail": json.dumps({"options": asdict(options)}),
                "table": str(self._identity),
            },
        ).fetchone()
        assert row is not None
        self._since, self._heap_file = str(row[1]), int(row[2])
        return Report(
            run_id=int(row[0]),
            state="running",
            dry_run=options.dry_run,
            resumed=False,
            batch_size=self._size,
            total_estimate=total,
        )

    def _estimate(self, conn: psycopg.Connection) -> int:
        row = conn.execute(self._q("estimate"), {"table": str(self._identity)}).fetchone()
        estimate = int(row[0]) if row and row[0] else 0
        if estimate <= 0:
            row = conn.execute(self._q("count")).fetchone()
            estimate = int(row[0]) if row else 0
        return estimate

    def _loop(self, report: Report) -> None:
        if report.ordering == "pages":
            self._loop_pages(report)
            return
        # A run started by a version that walked the keys: its cursor is a key, so it goes on
        # the same way.
        if self.options.workers > 1 and not self.options.dry_run:
            self._loop_parallel(report)
            return
        options = self.options
        after: Any = report.cursor
        throttle = _Throttle(options.max_rows_per_second, self.stop_event, self._beat(report))
        timeouts = 0
        while not self.stop_event.is_set():
            size = self._capped_size()
            began = time.monotonic()
            try:
                batch = self._retrying(self._batch, after, size, report)
            except _Timeout as exc:
                timeouts += 1
                if size <= options.min_batch_size and timeouts >= TRANSIENT_ATTEMPTS:
                    raise ProfileGuardError(
                        f"batches keep timing out even at {size} rows: {exc}",
                        hint="raise --lock-timeout/--statement-timeout or lower "
                        "--min-batch-size, then run: profileguard backfill --resume",
                    ) from exc
                self._size = max(options.min_batch_size, size // 2)
                log.warning("batch timed out (%s); retrying with %d rows", exc, self._size)
                self.stop_event.wait(random.uniform(0, min(5.0, 0.05 * 2**timeouts)))
                continue
            except _Failed as failed:
                batch = self._isolate(failed, report)
            timeouts = 0
            if batch.scanned == 0:
                break
            batch.seconds = time.monotonic() - began
            after = batch.last
            self._account(report, batch)
            self._adapt(size, batch)
            self._maybe_analyze(batch)
            if self.progress is not None:
                self.progress(self._snapshot(report))
            if batch.scanned < size:
                break
            throttle.account(batch.scanned)

    # ---------------------------------------------------------------- physical order

    def _heap(self) -> tuple[int, int, float | None]:
        """Pages of the identity table now, its file node and rows per page (estimated)."""
        with self._transaction() as conn:
            row = conn.execute(self._q("heap"), {"table": str(self._identity)}).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), None if row[2] is None else float(row[2])

    def _set_phase(self, report: Report, phase: str) -> None:
        with self._transaction() as conn:
            conn.execute(self._q("set_phase"), {"id": report.run_id, "phase": phase})

    def _loop_pages(self, report: Report) -> None:
        """The sweep over the heap pages from the cursor, then the catch-up (see the module)."""
        _, heap_file, per_page = self._retrying(self._heap)
        self._per_page = per_page or 50.0
        if report.phase != "catchup":
            self._sweep(report, catchup=False, all_rows=False)
            if self.stop_event.is_set() or self.options.dry_run:
                return
            self._retrying(self._set_phase, report, "catchup")
            report.phase, report.cursor = "catchup", None
        _, heap_file, _ = self._retrying(self._heap)
        all_rows = self._heap_file is None or heap_file != self._heap_file
        if all_rows:
            log.warning("the users table was rewritten during the run; the catch-up reads "
                        "every row")
        self._sweep(report, catchup=True, all_rows=all_rows)

    def _sweep(self, report: Report, *, catchup: bool, all_rows: bool) -> None:
        """Page ranges from the cursor to the end of the table, inserted by `workers` threads
        and checkpointed in page order (the cursor only ever covers ranges that are done)."""
        options = self.options
        workers = 1 if options.dry_run else options.workers
        page = int(report.cursor or 0)
        end = self._retrying(self._heap)[0]
        inflight: collections.deque[tuple[Future[_Batch], int]] = collections.deque()
        exhausted = False
        throttle = _Throttle(options.max_rows_per_second, self.stop_event, self._beat(report))
        with ThreadPoolExecutor(workers, thread_name_prefix="backfill") as pool:
            try:
                while True:
                    # One range queued beyond the busy workers, so none waits for the main
                    # thread's checkpoint or ANALYZE.
                    while (not exhausted and not self.stop_event.is_set()
                           and len(inflight) <= workers):
                        if page >= end:
                            end = self._retrying(self._heap)[0]  # grown meanwhile?
                            if page >= end:
                                exhausted = True
                                break
                        pages = self._catch_pages if catchup else max(
                            1, round(self._capped_size() / self._per_page))
                        last = min(end, page + pages)
                        inflight.append((pool.submit(
                            self._page_task, page, last, report, catchup, all_rows), last - page))
                        page = last
                    if not inflight:
                        break
                    future, pages = inflight.popleft()
                    batch = future.result()
                    self._retrying(self._record_isolated, batch, report)
                    self._account(report, batch)
                    self._adapt_pages(batch, pages, catchup)
                    self._maybe_analyze(batch)
                    if self.progress is not None:
                        self.progress(self._snapshot(report))
                    if not catchup:
                        throttle.account(batch.scanned)
            finally:
                for future, _ in inflight:
                    future.cancel()

    def _adapt_pages(self, batch: _Batch, pages: int, catchup: bool) -> None:
        """Move the pages per batch toward the target duration (rows per page as observed)."""
        options = self.options
        factor = options.target_seconds / max(batch.seconds, 1e-3)
        factor = min(ADAPT_FACTOR, max(1 / ADAPT_FACTOR, factor))
        if catchup:
            most = max(1, int(10 * options.max_batch_size / self._per_page))
            self._catch_pages = min(most, max(1, int(pages * factor)))
            return
        if batch.scanned <= 0 or batch.last - batch.first < pages:
            return
        self._per_page = max(1.0, batch.scanned / pages)
        self._size = min(options.max_batch_size,
                         max(options.min_batch_size, int(batch.scanned * factor)))
        self._catch_pages = max(self._catch_pages, pages)

    def _page_task(
        self, first: int, last: int, report: Report, catchup: bool, all_rows: bool
    ) -> _Batch:
        """Pages [first, last) on this worker thread's connection; a range that times out is
        retried in halves, one that fails is isolated (failures not yet recorded)."""
        began = time.monotonic()
        batch = _Batch(first=first, last=last)
        work = [(first, last)]
        timeouts = 0
        while work:
            low, high = work.pop()
            try:
                outcome = self._retrying(self._try_pages, low, high, report, catchup, all_rows)
            except _Timeout as exc:
                timeouts += 1
                if high - low <= 1 and timeouts >= TRANSIENT_ATTEMPTS:
                    raise ProfileGuardError(
                        f"batches keep timing out even at one page: {exc}",
                        hint="raise --lock-timeout/--statement-timeout, then run: "
                        "profileguard backfill --resume",
                    ) from exc
                if high - low > 1:
                    middle = (low + high) // 2
                    work += [(middle, high), (low, middle)]
                else:
                    work.append((low, high))
                self._size = max(self.options.min_batch_size, self._size // 2)
                log.warning("batch timed out (%s); retrying with %d rows", exc, self._size)
                self.stop_event.wait(random.uniform(0, min(5.0, 0.05 * 2**timeouts)))
                continue
            if isinstance(outcome, psycopg.Error):
                self._isolate_pages(low, high, outcome, report, catchup, all_rows, batch)
            else:
                batch.scanned += outcome[0]
                batch.created += outcome[1]
        batch.seconds = time.monotonic() - began
        return batch

    def _try_pages(
        self, first: int, last: int, report: Report, catchup: bool, all_rows: bool
    ) -> tuple[int, int] | psycopg.Error:
        """backfill_pages on [first, last) in its own transaction: (users, created) or the
        error."""
        dry = self.options.dry_run
        taken = len(report.sample)
        try:
            with self._transaction(rollback=dry) as conn:
                ids = self._sample_ids(conn, "sample_ids_pages", first, last, report)
                row = conn.execute(
                    self._q("insert_pages"),
                    {"first": first, "last": last, "run": None if dry else report.run_id,
                     "since": self._since if catchup and not all_rows else None,
                     "all_rows": catchup and all_rows},
                ).fetchone()
                self._keep_sample(conn, ids, report)
        except psycopg.Error as exc:
            del report.sample[taken:]
            if is_transient(exc) or exc.sqlstate in TIMEOUT_SQLSTATES or exc.sqlstate is None:
                raise
            return exc
        assert row is not None
        return int(row[0][0]), int(row[0][1])

    def _isolate_pages(
        self, first: int, last: int, error: psycopg.Error, report: Report, catchup: bool,
        all_rows: bool, batch: _Batch,
    ) -> None:
        """Split failed pages in halves down to single pages; a failed page is done user by
        user (by key), and the users that still fail are added to batch.failures."""
        log.info("pages [%s, %s) failed (%s); splitting", first, last, error.sqlstate)
        pending = [(first, last)]
        while pending:
            low, high = pending.pop()
            if high - low > 1:
                middle = (low + high) // 2
                for half in ((middle, high), (low, middle)):
                    outcome = self._retrying(
                        self._try_pages, *half, report, catchup, all_rows)
                    if isinstance(outcome, psycopg.Error):
                        pending.append(half)
                    else:
                        batch.scanned += outcome[0]
                        batch.created += outcome[1]
                continue
            users, missing = self._retrying(
                self._page_users, low, catchup and not all_rows)
            if not catchup:
                batch.scanned += users
            for user_id in missing:
                one = self._retrying(self._try_range, user_id, user_id, report)
                if isinstance(one, psycopg.Error):
                    batch.failures.append(repairs.failure_from(user_id, one))
                else:
                    batch.created += one

    def _page_users(self, page: int, catchup: bool) -> tuple[int, list[Any]]:
        """How many users one page holds, and those without a profile (in a catch-up only the
        rows written since the run began)."""
        with self._transaction() as conn:
            rows = conn.execute(
                self._q("page_users"),
                {"page": page, "since": self._since if catchup else None},
            ).fetchall()
        return len(rows), [r[0] for r in rows if r[1]]

    def _capped_size(self) -> int:
        size = self._size
        if self.options.max_rows_per_second is not None:
            cap = int(self.options.max_rows_per_second * self.options.target_seconds)
            size = max(self.options.min_batch_size, min(size, cap))
        return size

    def _adapt(self, size: int, batch: _Batch) -> None:
        """Move the batch size toward the target duration (full batches only)."""
        if batch.scanned < size:
            return
        options = self.options
        factor = options.target_seconds / max(batch.seconds, 1e-3)
        factor = min(ADAPT_FACTOR, max(1 / ADAPT_FACTOR, factor))
        self._size = min(options.max_batch_size, max(options.min_batch_size, int(size * factor)))

    def _bound(self, after: Any, size: int) -> tuple[Any, Any, int] | None:
        """First key, last key and count of the next `size` users after `after`."""
        with self._transaction() as conn:
            if after is None:
                row = conn.execute(self._q("bound_first"), {"n": size}).fetchone()
            else:
                row = conn.execute(
                    self._q("bound_after"), {"after": str(after), "n": size}
                ).fetchone()
        return None if row is None else (row[0], row[1], int(row[2]))

    def _range_task(self, first: Any, last: Any, count: int, report: Report) -> _Batch:
        """One range on this worker thread's connection; failures isolated, not yet recorded."""
        began = time.monotonic()
        batch = _Batch(first=first, last=last, scanned=count)
        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                outcome = self._retrying(self._try_range, first, last, report)
                break
            except _Timeout:
                if attempt == TRANSIENT_ATTEMPTS - 1:
                    raise
                self.stop_event.wait(random.uniform(0, min(5.0, 0.05 * 2**attempt)))
        if isinstance(outcome, psycopg.Error):
            failed = self._isolate_only(_Failed(first, last, count, outcome), report)
            batch.created, batch.failures = failed.created, failed.failures
        else:
            batch.created = outcome
        batch.seconds = time.monotonic() - began
        return batch

    def _loop_parallel(self, report: Report) -> None:
        """Ranges found in key order on the main connection, inserted by `workers` threads,
        checkpointed in key order (the cursor only ever covers ranges that are done)."""
        options = self.options
        after: Any = report.cursor
        inflight: collections.deque[tuple[Future[_Batch], int]] = collections.deque()
        exhausted = False
        throttle = _Throttle(options.max_rows_per_second, self.stop_event, self._beat(report))
        with ThreadPoolExecutor(options.workers, thread_name_prefix="backfill") as pool:
            try:
                while True:
                    # One range queued beyond the busy workers, so none waits for the main
                    # thread's bound query, checkpoint or ANALYZE.
                    while (not exhausted and not self.stop_event.is_set()
                           and len(inflight) <= options.workers):
                        size = self._capped_size()
                        bound = self._retrying(self._bound, after, size)
                        if bound is None:
                            exhausted = True
                            break
                        first, last, count = bound
                        inflight.append(
                            (pool.submit(self._range_task, first, last, count, report), size)
                        )
                        after = last
                        exhausted = count < size
                    if not inflight:
                        break
                    future, size = inflight.popleft()
                    batch = future.result()
                    self._retrying(self._record_isolated, batch, report)
                    self._account(report, batch)
                    self._adapt(size, batch)
                    self._maybe_analyze(batch)
                    if self.progress is not None:
                        self.progress(self._snapshot(report))
                    throttle.account(batch.scanned)
            finally:
                # Let running ranges end (their work is committed or rolled back) before
                # the run is recorded; those not checkpointed are redone by --resume.
                for future, _ in inflight:
                    future.cancel()

    def _maybe_analyze(self, batch: _Batch) -> None:
        """ANALYZE the profile table as it grows (see ANALYZE_FIRST); best effort."""
        if self.options.dry_run:
            return
        self._created_here += batch.created
        if self._created_here < self._analyze_at:
            return
        self._analyze_at = ANALYZE_GROWTH * self._created_here
        try:
            self._connection().execute(self._q("analyze_profile"))
        except psycopg.Error as exc:
            log.info("could not analyze the profile table: %s", exc)
            if self._conn is not None and self._conn.broken:
                self._conn = None

    def _batch(self, after: Any, size: int, report: Report) -> _Batch:
        """The next batch in one transaction: bound, insert, checkpoint."""
        dry = self.options.dry_run
        batch = _Batch()
        with self._transaction(rollback=dry) as conn:
            if after is None:
                row = conn.execute(self._q("bound_first"), {"n": size}).fetchone()
            else:
                row = conn.execute(
                    self._q("bound_after"), {"after": str(after), "n": size}
                ).fetchone()
            if row is None:
                return batch
            batch.first, batch.last, batch.scanned = row[0], row[1], int(row[2])
            try:
                batch.created = self._insert(conn, batch.first, batch.last, report)
            except psycopg.Error as exc:
                if is_transient(exc) or exc.sqlstate in TIMEOUT_SQLSTATES or conn.broken:
                    raise
                raise _Failed(batch.first, batch.last, batch.scanned, exc) from exc
            if not dry:
                self._checkpoint(conn, batch, report)
        if dry:
            with self._transaction() as conn:
                self._checkpoint(conn, batch, report)
        return batch

    def _checkpoint(self, conn: psycopg.Connection, batch: _Batch, report: Report) -> None:
        dry = self.options.dry_run
        quarantined = 0
        if batch.failures and not dry:
            quarantined = repairs.record_failures(
                conn,
                batch.failures,
                source=SOURCE,
                max_attempts=1,
                backoff_base=1.0,
                backoff_cap=300.0,
                detail={"run_id": report.run_id},
            )
        now = time.monotonic()
        elapsed, self._mark = now - self._mark, now
        conn.execute(
            self._q("checkpoint"),
            {
                "id": report.run_id,
                "cursor": None if batch.last is None else str(batch.last),
                "scanned": batch.scanned,
                "created": batch.created if dry else 0,
                "failed": len(batch.failures),
                "quarantined": quarantined,
                "batch_size": self._size,
                "elapsed": elapsed,
            },
        )
        batch.quarantined = quarantined

    def _insert(self, conn: psycopg.Connection, first: Any, last: Any, report: Report) -> int:
        """backfill_range on [first, last]; a dry run also keeps a sample of what it made."""
        dry = self.options.dry_run
        ids = self._sample_ids(conn, "sample_ids", first, last, report)
        row = conn.execute(
            self._q("insert_range"),
            {"first": first, "last": last, "run": None if dry else report.run_id},
        ).fetchone()
        self._keep_sample(conn, ids, report)
        return int(row[0]) if row and row[0] is not None else 0

    def _sample_ids(
        self, conn: psycopg.Connection, query: str, first: Any, last: Any, report: Report
    ) -> list[Any]:
        """In a dry run, the ids (of [first, last]) whose would-be profiles fill the sample."""
        want = self.options.sample - len(report.sample) if self.options.dry_run else 0
        if want <= 0:
            return []
        rows = conn.execute(
            self._q(query), {"first": first, "last": last, "n": want}
        ).fetchall()
        return [r[0] for r in rows]

    def _keep_sample(self, conn: psycopg.Connection, ids: list[Any], report: Report) -> None:
        """Add the profiles just made (and about to be rolled back) for `ids` to the sample."""
        if ids:
            rows = conn.execute(self._q("sample_profiles"), {"ids": ids}).fetchall()
            report.sample.extend(dict(r[0]) for r in rows)

    def _isolate(self, failed: _Failed, report: Report) -> _Batch:
        """Split the failed batch until its bad users are isolated; the rest are created.
        Then record the failures and the checkpoint."""
        batch = self._isolate_only(failed, report)
        self._retrying(self._record_isolated, batch, report)
        return batch

    def _isolate_only(self, failed: _Failed, report: Report) -> _Batch:
        """Split the failed range until its bad users are isolated; the rest are created."""
        batch = _Batch(first=failed.first, last=failed.last, scanned=failed.count)
        log.info(
            "batch [%s, %s] failed (%s %s); splitting",
            failed.first, failed.last, failed.error.sqlstate,
            failed.error.diag.message_primary if failed.error.sqlstate else failed.error,
        )
        pending: list[tuple[Any, Any, int, psycopg.Error]] = [
            (failed.first, failed.last, failed.count, failed.error)
        ]
        while pending:
            first, last, count, error = pending.pop()
            if count <= 1:
                batch.failures.append(repairs.failure_from(first, error))
                continue
            halves = self._retrying(self._split, first, last)
            if halves is None:
                batch.failures.append(repairs.failure_from(first, error))
                continue
            for half in reversed(halves):
                outcome = self._retrying(self._try_range, half[0], half[1], report)
                if isinstance(outcome, psycopg.Error):
                    pending.append((half[0], half[1], half[2], outcome))
                else:
                    batch.created += outcome
        return batch

    def _split(self, first: Any, last: Any) -> list[tuple[Any, Any, int]] | None:
        """[first, last] as two halves (first, last, count); None when it holds one user."""
        with self._transaction() as conn:
            row = conn.execute(self._q("range_count"), {"first": first, "last": last}).fetchone()
            count = int(row[0]) if row else 0
            if count <= 1:
                return None
            keys = [
                r[0]
                for r in conn.execute(
                    self._q("range_split"),
                    {"first": first, "last": last, "skip": count // 2 - 1},
                ).fetchall()
            ]
        if len(keys) < 2:
            return None
        return [(first, keys[0], count // 2), (keys[1], last, count - count // 2)]

    def _try_range(self, first: Any, last: Any, report: Report) -> int | psycopg.Error:
        """backfill_range on [first, last] in its own transaction: the count, or the error."""
        taken = len(self._report.sample) if self._report else 0
        try:
            with self._transaction(rollback=self.options.dry_run) as conn:
                return self._insert(conn, first, last, report)
        except psycopg.Error as exc:
            if self._report is not None:
                del self._report.sample[taken:]
            if is_transient(exc) or exc.sqlstate in TIMEOUT_SQLSTATES or exc.sqlstate is None:
                raise
            return exc

    def _record_isolated(self, batch: _Batch, report: Report) -> None:
        with self._transaction() as conn:
            self._checkpoint(conn, batch, report)

    def _account(self, report: Report, batch: _Batch) -> None:
        report.scanned += batch.scanned
        report.created += batch.created
        report.failed += len(batch.failures)
        report.quarantined += batch.quarantined
        report.batches += 1
        report.batch_size = self._size
        report.cursor = None if batch.last is None else str(batch.last)
        for failure in batch.failures:
            if len(report.failures) >= FAILURE_LIST_LIMIT:
                report.failures_truncated = True
                break
            report.failures.append(
                {"user_id": str(failure.user_id), "sqlstate": failure.sqlstate,
                 "message": failure.message}
            )

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
            batch_size=self._size,
            total_estimate=max(report.total_estimate, report.scanned),
            elapsed=elapsed,
            rows_per_second=report.scanned / elapsed if elapsed > 0 else 0.0,
        )

    def _finish(self, report: Report, state: str, error: BaseException | None) -> None:
        """Record the end state (best effort: on a broken connection, on a new one)."""
        detail: dict[str, Any] = {"owner": self.owner}
        if error is not None and not isinstance(error, KeyboardInterrupt):
            detail["error"] = str(error)[:2000]
            detail["sqlstate"] = getattr(error, "sqlstate", None)
        elapsed = time.monotonic() - self._mark

        def finish(conn: psycopg.Connection) -> None:
            row = conn.execute(
                self._q("finish"),
                {"id": report.run_id, "state": state, "elapsed": elapsed,
                 "detail": json.dumps(detail, default=str)},
            ).fetchone()
            if row:
                report.scanned, report.created, report.failed = int(row[0]), int(row[1]), int(
                    row[2]
                )
                report.quarantined, report.batches = int(row[3]), int(row[4])
                report.duration = float(row[5])
                report.cursor = row[6]

        try:
            conn = self._conn
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
        finally:
            self._close()
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


__all__ = ["Backfill", "BackfillBusyError", "Options", "Progress", "Report", "run_backfill"]

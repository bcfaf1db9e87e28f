"""The scan: the identity table's heap pages in order, in page-range batches inserted by
`workers` threads (each batch one `profileguard.backfill_pages` call in its own short
transaction) and handed back in page order, so the checkpoint only ever covers ranges that are
done. The catch-up is the same walk again over the rows written since the run began."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from profileguard.backfill.connections import (
    TRANSIENT_ATTEMPTS,
    BatchTimeout,
    Connections,
    is_retryable,
    jitter,
)
from profileguard.backfill.model import Batch, Options, Report
from profileguard.backfill.sizing import Sizer, Throttle
from profileguard.errors import ProfileGuardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pass:
    """One walk over the pages: the scan, or the catch-up (`since`: rows written by
    transactions not older than this xid; `all_rows`: the table was rewritten, take every row)."""

    catchup: bool = False
    since: str | None = None
    all_rows: bool = False


class FailedPages(Protocol):
    """What to do with a page range whose batch failed with an error of its data or schema."""

    def __call__(
        self, first: int, last: int, error: psycopg.Error, batch: Batch, walk: Pass
    ) -> None: ...


class Scan:
    """Walks the pages of one run; `done` is called on the main thread for each batch, in page
    order (it checkpoints and reports)."""

    def __init__(
        self,
        db: Connections,
        options: Options,
        sizer: Sizer,
        report: Report,
        stop_event: threading.Event,
        identity: str,
    ):
        self.db = db
        self.identity = identity
        self.options = options
        self.sizer = sizer
        self.report = report
        self.stop_event = stop_event
        self.failed: FailedPages | None = None

    def heap(self) -> tuple[int, int, float | None]:
        """Pages of the identity table now, its file node and rows per page (estimated)."""
        with self.db.transaction() as conn:
            row = conn.execute(self.db.q("heap"), {"table": self.identity}).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), None if row[2] is None else float(row[2])

    def walk(self, walk: Pass, done: Callable[[Batch, int], None]) -> None:
        """Page ranges from the cursor to the end of the table (see the module)."""
        workers = 1 if self.options.dry_run else self.options.workers
        page = int(self.report.cursor or 0)
        end = self.db.retrying(self.heap)[0]
        inflight: collections.deque[tuple[Future[Batch], int]] = collections.deque()
        exhausted = False
        throttle = Throttle(self.options.max_rows_per_second, self.stop_event)
        with ThreadPoolExecutor(workers, thread_name_prefix="backfill") as pool:
            try:
                while True:
                    # One range queued beyond the busy workers, so none waits for the main
                    # thread's checkpoint or ANALYZE.
                    while (
                        not exhausted and not self.stop_event.is_set() and len(inflight) <= workers
                    ):
                        if page >= end:
                            end = self.db.retrying(self.heap)[0]  # grown meanwhile?
                            if page >= end:
                                exhausted = True
                                break
                        last = min(end, page + self.sizer.pages(walk.catchup))
                        inflight.append((pool.submit(self._task, page, last, walk), last - page))
                        page = last
                    if not inflight:
                        break
                    future, pages = inflight.popleft()
                    batch = future.result()
                    done(batch, pages)
                    if not walk.catchup:
                        throttle.account(batch.scanned)
            finally:
                # Let running ranges end (committed or rolled back); those not checkpointed
                # are redone by --resume.
                for future, _ in inflight:
                    future.cancel()

    def _task(self, first: int, last: int, walk: Pass) -> Batch:
        """Pages [first, last) on this worker thread's connection; a range that times out is
        retried in halves, one that fails goes to `failed`."""
        began = time.monotonic()
        batch = Batch(first=first, last=last)
        work = [(first, last)]
        timeouts = 0
        while work:
            low, high = work.pop()
            try:
                outcome = self.db.retrying(self.try_pages, low, high, walk)
            except BatchTimeout as exc:
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
                size = self.sizer.shrink()
                log.warning("batch timed out (%s); retrying with %d rows", exc, size)
                jitter(self.stop_event, timeouts)
                continue
            if isinstance(outcome, psycopg.Error):
                assert self.failed is not None
                self.failed(low, high, outcome, batch, walk)
            else:
                batch.scanned += outcome[0]
                batch.created += outcome[1]
        batch.seconds = time.monotonic() - began
        return batch

    def try_pages(self, first: int, last: int, walk: Pass) -> tuple[int, int] | psycopg.Error:
        """backfill_pages on [first, last) in its own transaction: (users, created), or the
        error when it is one of the data or the schema (others are raised)."""
        dry = self.options.dry_run
        taken = len(self.report.sample)
        try:
            with self.db.transaction(rollback=dry) as conn:
                ids = self._sample_ids(conn, first, last)
                row = conn.execute(
                    self.db.q("insert_pages"),
                    {
                        "first": first,
                        "last": last,
                        "run": None if dry else self.report.run_id,
                        "since": walk.since,
                        "all_rows": walk.all_rows,
                    },
                ).fetchone()
                self.keep_sample(conn, ids)
        except psycopg.Error as exc:
            del self.report.sample[taken:]
            if is_retryable(exc):
                raise
            return exc
        assert row is not None
        return int(row[0][0]), int(row[0][1])

    def _sample_ids(self, conn: psycopg.Connection, first: int, last: int) -> list[Any]:
        """In a dry run, the ids (of pages [first, last)) whose would-be profiles fill the
        sample."""
        want = self.options.sample - len(self.report.sample) if self.options.dry_run else 0
        if want <= 0:
            return []
        rows = conn.execute(
            self.db.q("sample_ids_pages"), {"first": first, "last": last, "n": want}
        ).fetchall()
        return [r[0] for r in rows]

    def keep_sample(self, conn: psycopg.Connection, ids: list[Any]) -> None:
        """Add the profiles just made (and about to be rolled back) for `ids` to the sample."""
        if ids:
            rows = conn.execute(self.db.q("sample_profiles"), {"ids": ids}).fetchall()
            self.report.sample.extend(dict(r[0]) for r in rows)

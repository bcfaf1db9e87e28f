"""A failed page range, isolated: split in halves down to single pages, a failing page done
user by user; the users that still fail are the batch's failures."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from profileguard import repairs
from profileguard.backfill.connections import is_retryable
from profileguard.backfill.model import Batch
from profileguard.backfill.sweep import Pass, Sweep

log = logging.getLogger(__name__)


class Isolation:
    """Isolates the failing users of a failed page range (see the module)."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.db = sweep.db

    def __call__(self, first: int, last: int, error: psycopg.Error, batch: Batch,
                 walk: Pass) -> None:
        log.info("pages [%s, %s) failed (%s); splitting", first, last, error.sqlstate)
        pending = [(first, last)]
        while pending:
            low, high = pending.pop()
            if high - low > 1:
                middle = (low + high) // 2
                for half in ((middle, high), (low, middle)):
                    outcome = self.db.retrying(self.sweep.try_pages, *half, walk)
                    if isinstance(outcome, psycopg.Error):
                        pending.append(half)
                    else:
                        batch.scanned += outcome[0]
                        batch.created += outcome[1]
                continue
            users, missing = self.db.retrying(self._page_users, low, walk)
            if not walk.catchup:
                batch.scanned += users
            for user_id in missing:
                one = self.db.retrying(self._try_user, user_id)
                if isinstance(one, psycopg.Error):
                    batch.failures.append(repairs.failure_from(user_id, one))
                    batch.failed += 1
                else:
                    batch.created += one

    def _page_users(self, page: int, walk: Pass) -> tuple[int, list[Any]]:
        """How many users one page holds, and those without a profile (in a catch-up only the
        rows written since the run began)."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                self.db.q("page_users"), {"page": page, "since": walk.since}
            ).fetchall()
        return len(rows), [r[0] for r in rows if r[1]]

    def _try_user(self, user_id: Any) -> int | psycopg.Error:
        """backfill_range on one user in its own transaction: the count, or the error."""
        report = self.sweep.report
        dry = self.sweep.options.dry_run
        taken = len(report.sample)
        try:
            with self.db.transaction(rollback=dry) as conn:
                want = self.sweep.options.sample - len(report.sample) if dry else 0
                row = conn.execute(
                    self.db.q("insert_range"),
                    {"first": user_id, "last": user_id, "run": None if dry else report.run_id},
                ).fetchone()
                if want > 0:
                    self.sweep.keep_sample(conn, [user_id])
                return int(row[0]) if row and row[0] is not None else 0
        except psycopg.Error as exc:
            del report.sample[taken:]
            if is_retryable(exc):
                raise
            return exc

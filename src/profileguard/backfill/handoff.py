"""A batch that fails with an error of the data or the schema hands its users to the repair
engine, `profileguard.repair(ids, 'backfill')`, which isolates the failing users itself, charges
users' own failures (the backfill does not come back to a user: one attempt quarantines) and
holds a fault that fails everyone behind a breaker. Such a fault stops the run (faults.py)."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from profileguard.backfill import faults
from profileguard.backfill.connections import BatchTimeout
from profileguard.backfill.model import FAILURE_LIST_LIMIT, Batch, Failure
from profileguard.backfill.scan import Pass, Scan
from profileguard.errors import ProfileGuardError

log = logging.getLogger(__name__)

# Ids per engine call (each call is one transaction with its own subtransaction budget).
CHUNK = 1000


@dataclass
class Outcome:
    """What one engine call did: its counts, the users it charged, the ids it did not try."""

    result: dict[str, Any]
    failures: list[Failure] = field(default_factory=list)
    deferred: list[Any] = field(default_factory=list)


class Handoff:
    """Hands the users of a failed page range to the repair engine (see the module)."""

    def __init__(self, scan: Scan):
        self.scan = scan
        self.db = scan.db

    def __call__(
        self, first: int, last: int, error: psycopg.Error, batch: Batch, walk: Pass
    ) -> None:
        """The failed pages' users without a profile go to the engine in chunks."""
        run_id = self.scan.report.run_id
        stop = faults.from_error(error, run_id)
        if stop is not None:
            raise stop from error
        log.info(
            "pages [%s, %s) failed (%s); handing their users to the repair engine",
            first,
            last,
            error.sqlstate,
        )
        try:
            users, missing, quarantined = self.db.retrying(self._missing, first, last, walk)
            if not walk.catchup:
                batch.scanned += users
            if quarantined and not walk.catchup:
                # (The catch-up leaves them out: the scan counted them, or the worker has
                # them: a row written during the run.)
                self._still_quarantined(quarantined, batch)
            self._repair_all(missing, batch)
        except BatchTimeout as exc:
            raise ProfileGuardError(
                f"repairing the users of a failed batch timed out: {exc}",
                hint="raise --lock-timeout/--statement-timeout, then run: "
                "profileguard backfill --resume",
            ) from exc
        except psycopg.Error as exc:
            stop = faults.from_error(exc, run_id)
            if stop is not None:
                raise stop from exc
            raise

    def _missing(self, first: int, last: int, walk: Pass) -> tuple[int, list[Any], list[Any]]:
        """How many users pages [first, last) hold, those without a profile, and apart those
        of them quarantined before."""
        with self.db.transaction() as conn:
            row = conn.execute(
                self.db.q("pages_missing"),
                {"first": first, "last": last, "since": walk.since},
            ).fetchone()
        assert row is not None
        return int(row[0]), list(row[1]), list(row[2])

    def _still_quarantined(self, ids: list[Any], batch: Batch) -> None:
        """Users quarantined before (by an earlier run or the worker) count as failed again,
        with their recorded cause; the engine is not asked, so a handful of them failing alike
        is not taken for a fault that fails everyone."""
        room = FAILURE_LIST_LIMIT - len(batch.failures)
        if room > 0:
            batch.failures.extend(self.db.retrying(self._recorded, ids, room))
        batch.failed += len(ids)

    def _recorded(self, ids: list[Any], n: int) -> list[Failure]:
        with self.db.transaction() as conn:
            rows = conn.execute(self.db.q("quarantined_failures"), {"ids": ids, "n": n}).fetchall()
        return [Failure(r[0], r[1], r[2] or "") for r in rows]

    def _repair_all(self, ids: list[Any], batch: Batch) -> None:
        """Engine calls over `ids` in chunks until none is left untried."""
        pending = collections.deque(ids)
        while pending:
            chunk = [pending.popleft() for _ in range(min(CHUNK, len(pending)))]
            outcome = self.db.retrying(self._repair, chunk)
            result = outcome.result
            if result.get("systemic"):
                raise faults.from_engine(result["systemic"], self.scan.report.run_id)
            batch.created += int(result.get("created") or 0)
            batch.failed += int(result.get("failed") or 0)
            batch.quarantined += int(result.get("quarantined") or 0)
            room = FAILURE_LIST_LIMIT - len(batch.failures)
            batch.failures.extend(outcome.failures[: max(0, room)])
            if len(outcome.deferred) >= len(chunk):
                raise ProfileGuardError(
                    f"the repair engine made no progress on {len(chunk)} users",
                    hint="run: profileguard backfill --resume",
                )
            pending.extendleft(reversed(outcome.deferred))

    def _repair(self, chunk: list[Any]) -> Outcome:
        """One engine call in its own transaction (rolled back in a dry run); then, before it
        ends, the users it charged and the ids it left untried."""
        report, dry = self.scan.report, self.scan.options.dry_run
        taken = len(report.sample)
        try:
            with self.db.transaction(rollback=dry) as conn:
                row = conn.execute(self.db.q("repair"), {"ids": chunk}).fetchone()
                assert row is not None
                outcome = Outcome(dict(row[0]))
                params = {"ids": chunk, "n": FAILURE_LIST_LIMIT}
                outcome.failures = [
                    Failure(r[0], r[1], r[2] or "")
                    for r in conn.execute(self.db.q("repair_failures"), params).fetchall()
                ]
                outcome.deferred = [
                    r[0] for r in conn.execute(self.db.q("repair_deferred"), params).fetchall()
                ]
                created = int(outcome.result.get("created") or 0)
                if dry:
                    want = self.scan.options.sample - len(report.sample)
                    self.scan.keep_sample(conn, chunk[: max(0, want)])
                elif created:
                    conn.execute(self.db.q("add_created"), {"id": report.run_id, "n": created})
        except psycopg.Error:
            del report.sample[taken:]
            raise
        return outcome

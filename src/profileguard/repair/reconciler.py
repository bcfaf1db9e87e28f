"""Passes of the worker: find users without a profile, claim them, and hand them to the one repair
engine (`profileguard.repair`, SQL); look at the catalog and probe breakers (`heal`)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from profileguard.errors import InvalidUserIdError
from profileguard.install import CLAIM_SEED
from profileguard.repair import loop
from profileguard.repair.outcome import BatchOutcome, PassResult
from profileguard.repair.session import Session

log = logging.getLogger("profileguard.repair")

SOURCE = "worker"


class Reconciler(Session):
    """Finds users without a profile and creates their profiles; safe to run many at once."""

    # ---------------------------------------------------------------- repair

    def _repair(self, ids: Sequence[Any]) -> BatchOutcome:
        """Claim `ids` and hand them to the engine, one transaction per call (retried as a whole
        on transient errors); ids the engine deferred (its subtransaction budget) get further
        calls, each its own transaction."""
        outcome = BatchOutcome(scanned=len(ids))
        pending = list(ids)
        while pending:
            deferred_before = outcome.deferred

            def run(conn: psycopg.Connection, batch: list[Any] = pending) -> list[Any]:
                with conn.transaction():
                    claimed = [
                        row[0]
                        for row in conn.execute(
                            self._claim_query(), {"ids": batch, "seed": CLAIM_SEED}
                        )
                    ]
                    if not claimed:
                        return []
                    row = conn.execute(
                        self._repair_query(),
                        {
                            "ids": claimed,
                            "source": SOURCE,
                            "max": self.max_attempts,
                            "base": self.backoff_base,
                            "cap": self.backoff_cap,
                            "quarantine": self.quarantine_retry,
                        },
                    ).fetchone()
                outcome.claimed = outcome.claimed or len(claimed)
                outcome.take(row[0] if row else {})
                return claimed

            claimed = self._retrying(run)
            if not claimed or outcome.deferred == deferred_before or outcome.systemic:
                break
            # Only the deferred ids are left without a profile and not held: filter again.
            pending = self._retrying(functools.partial(self._filter, ids=claimed))
        self._log_outcome(outcome)
        return outcome

    def _claim_query(self) -> sql.Composed:
        return sql.SQL(
            "select c.id from unnest(%(ids)s::{key}[]) as c(id)"
            " where pg_try_advisory_xact_lock(hashtextextended(c.id::text, %(seed)s))"
            " and not exists (select from {profile} p where p.{pkey} = c.id)"
        ).format(key=self._key, profile=self._profile, pkey=self._pkey)

    def _repair_query(self) -> sql.Composed:
        return sql.SQL(
            "select profileguard.repair(%(ids)s::{key}[], %(source)s, %(max)s, %(base)s, %(cap)s,"
            " p_quarantine_retry => %(quarantine)s)"
        ).format(key=self._key)

    def _log_outcome(self, outcome: BatchOutcome) -> None:
        """One line per batch that did something: repaired, charged, quarantined, held."""
        if outcome.repaired:
            log.info(
                "repaired %d profile(s)",
                outcome.repaired,
                extra={"event": "repaired", "count": outcome.repaired, "worker_id": self.worker_id},
            )
        if outcome.failed:
            log.warning(
                "%d user(s) failed on their own data (%d quarantined)",
                outcome.failed,
                outcome.quarantined,
                extra={
                    "event": "failed",
                    "count": outcome.failed,
                    "quarantined": outcome.quarantined,
                    "worker_id": self.worker_id,
                },
            )
        for fault in outcome.systemic:
            log.warning(
                "breaker open: every user fails with %s (%s); %d user(s) wait",
                fault.get("fingerprint"),
                fault.get("message"),
                outcome.waiting,
                extra={
                    "event": "breaker_open",
                    "fingerprint": fault.get("fingerprint"),
                    "sqlstate": fault.get("sqlstate"),
                    "object": fault.get("object"),
                    "worker_id": self.worker_id,
                },
            )

    def _account(self, result: PassResult, outcome: BatchOutcome) -> None:
        result.add(outcome)
        with self._lock:
            self.stats["repaired"] += outcome.repaired
            self.stats["failed"] += outcome.failed
            self.stats["quarantined"] += outcome.quarantined
            self.stats["waiting"] += outcome.waiting

    # ---------------------------------------------------------------- passes

    def run_once(self, stop_event: threading.Event | None = None) -> PassResult:
        """One full sweep of the identity table; stops early (between batches) on stop_event."""
        started = time.monotonic()
        result = PassResult()
        after: Any = None
        while stop_event is None or not stop_event.is_set():
            batch = self._retrying(functools.partial(self._scan, after=after))
            if not batch:
                break
            after = batch[-1]
            self._account(result, self._repair(batch))
            if len(batch) < self.batch_size:
                break
        self._retrying(self._cleanup)
        if stop_event is None or not stop_event.is_set():
            self._full_due = False
        self._drift_pass(stop_event, full=True)
        result.duration = time.monotonic() - started
        with self._lock:
            self.stats["passes"] += 1
            self.stats["last_pass"] = result.as_dict()
        return result

    def _cleanup(self, conn: psycopg.Connection) -> None:
        """Drop repair state of users that have a profile now or no longer exist."""
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "delete from profileguard.repair_state r"
                    " where exists (select from {profile} p where p.{pkey} = r.user_id::{key})"
                    " or not exists (select from {identity} u where u.{ikey} = r.user_id::{key})"
                ).format(
                    profile=self._profile,
                    pkey=self._pkey,
                    key=self._key,
                    identity=self._identity,
                    ikey=self._ikey,
                )
            )

    def repair_users(
        self, ids: Iterable[Any], stop_event: threading.Event | None = None
    ) -> PassResult:
        """Repair just these users (those without a profile that are not backed off)."""
        started = time.monotonic()
        result = PassResult()
        pending = list(ids)
        for start in range(0, len(pending), self.batch_size):
            if stop_event is not None and stop_event.is_set():
                break
            chunk = pending[start : start + self.batch_size]

            def select(conn: psycopg.Connection, chunk: list[Any] = chunk) -> list[Any]:
                return self._filter(conn, chunk)

            batch = self._retrying(select)
            if batch:
                self._account(result, self._repair(batch))
        result.duration = time.monotonic() - started
        return result

    def run_incremental(self, stop_event: threading.Event | None = None) -> PassResult:
        """Users named in failure events since the last look (and in the last `recheck_seconds`),
        and users whose backoff is over."""
        started = time.monotonic()
        result = PassResult()
        if self._event_cursor is None:
            self._event_cursor = 0
        while stop_event is None or not stop_event.is_set():
            cursor = self._event_cursor

            def failures(conn: psycopg.Connection, cursor: int = cursor) -> list[tuple[Any, ...]]:
                with conn.transaction():
                    return conn.execute(
                        "select e.id, e.user_id from profileguard.events e"
                        " where e.kind = 'failure' and e.id > %(after)s and e.user_id is not null"
                        " order by e.id limit %(n)s",
                        {"after": cursor, "n": self.batch_size},
                    ).fetchall()

            rows = self._retrying(failures)
            if not rows:
                break
            ids = self._parse_ids(dict.fromkeys(str(r[1]) for r in rows))
            part = self.repair_users(ids)
            result.merge(part)
            self._event_cursor = int(rows[-1][0])
            if len(rows) < self.batch_size:
                break

        def due(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            with conn.transaction():
                return conn.execute(
                    "select user_id from profileguard.repair_state"
                    " where waiting_on is null and next_attempt_at <= now()"
                    " order by next_attempt_at limit %(n)s",
                    {"n": self.batch_size},
                ).fetchall()

        def recent(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            # Event ids are taken at insert, not at commit: a failure committed after a later id
            # was read lies below the cursor. Looking again at recent failures (cheap: users with
            # a profile are filtered out) catches it now; the full sweep catches anything older.
            with conn.transaction():
                return conn.execute(
                    "select e.user_id from profileguard.events e"
                    " where e.kind = 'failure' and e.user_id is not null and e.id <= %(cursor)s"
                    " and e.created_at > now() - make_interval(secs => %(secs)s)"
                    " group by e.user_id limit %(n)s",
                    {
                        "cursor": self._event_cursor,
                        "secs": self.recheck_seconds,
                        "n": self.batch_size,
                    },
                ).fetchall()

        for query in (recent, due):
            if stop_event is not None and stop_event.is_set():
                break
            rows = self._retrying(query)
            if rows:
                result.merge(self.repair_users(self._parse_ids(str(r[0]) for r in rows)))
        result.merge(self._repair_found(stop_event))
        self._drift_pass(stop_event, full=False)
        result.duration = time.monotonic() - started
        return result

    def retry(
        self, user_ids: Iterable[Any] | None = None, *, all_quarantined: bool = False
    ) -> PassResult:
        """Clear the attempts/quarantine of these users (or all quarantined ones) and repair them
        now."""
        texts = [str(u) for u in user_ids or ()]

        def reset(conn: psycopg.Connection) -> list[str]:
            with conn.transaction():
                rows = conn.execute(
                    "update profileguard.repair_state set attempts = 0, quarantined_at = null,"
                    " waiting_on = null, next_attempt_at = now(), updated_at = now()"
                    " where user_id = any(%(ids)s::text[])"
                    " or (%(all)s and quarantined_at is not null)"
                    " returning user_id",
                    {"ids": texts, "all": all_quarantined},
                ).fetchall()
            return [str(r[0]) for r in rows]

        if not texts and not all_quarantined:
            return PassResult()
        self._connection()  # resolves the key type used by _parse_ids
        bad = [t for t in texts if not self._parse_ids([t])]
        if bad:
            raise InvalidUserIdError(
                f"not a user id ({self._key_type}): {', '.join(repr(b) for b in bad[:5])}",
                hint="pass ids of the identity table's key, or --all-quarantined",
            )
        reset_ids = self._retrying(reset)
        ids = self._parse_ids(dict.fromkeys([*texts, *reset_ids]))
        return self.repair_users(ids)

    def _repair_found(self, stop_event: threading.Event | None) -> PassResult:
        """Users the invariant check found without a profile (inserted with the trigger off, by
        `session_replication_role = replica`, by COPY): no failure event names them."""
        result = PassResult()
        while stop_event is None or not stop_event.is_set():
            cursor = self._found_cursor

            def found(conn: psycopg.Connection, cursor: int = cursor) -> list[tuple[Any, ...]]:
                with conn.transaction():
                    return conn.execute(
                        "select found_seq, user_id from profileguard.found_missing(%s, %s)",
                        (cursor, self.batch_size),
                    ).fetchall()

            rows = self._retrying(found)
            if not rows:
                break
            self._found_cursor = max(int(r[0]) for r in rows)
            result.merge(self.repair_users(self._parse_ids(str(r[1]) for r in rows)))
            if len(rows) < self.batch_size:
                break
        return result

    def heal(self) -> dict[str, Any]:
        """Look at the catalog (a change releases whoever a change could help) and probe the open
        breakers that are due; returns {"catalog_changed", "probed", "closed", "released"}."""

        def look(conn: psycopg.Connection) -> dict[str, Any]:
            with conn.transaction():
                changed = conn.execute("select profileguard.check_catalog()").fetchone()
            with conn.transaction():  # at most every 2 s, whoever calls it (stats() does too)
                invariant = conn.execute("select profileguard.check_invariant()").fetchone()
            with conn.transaction():
                probe = conn.execute("select profileguard.probe_breakers()").fetchone()
            result: dict[str, Any] = dict(probe[0]) if probe and probe[0] else {}
            result["catalog_changed"] = bool(changed and changed[0])
            result["found_missing"] = int(
                ((invariant[0] if invariant else None) or {}).get("found") or 0
            )
            return result

        result = self._retrying(look)
        if result["catalog_changed"]:
            log.info(
                "the profile table or profileguard changed: backed-off and quarantined"
                " users are tried again",
                extra={"event": "catalog_changed", "worker_id": self.worker_id},
            )
        if result.get("closed"):
            log.info(
                "breaker closed: %s user(s) released",
                result.get("released", 0),
                extra={
                    "event": "breaker_closed",
                    "released": result.get("released", 0),
                    "worker_id": self.worker_id,
                },
            )
        with self._lock:
            self.stats["breakers_closed"] += int(result.get("closed") or 0)
            self.stats["catalog_changes"] += int(result["catalog_changed"])
        return result

    # ---------------------------------------------------------------- the long-running worker

    def run_forever(self, stop_event: threading.Event) -> None:
        """Serve until stop_event is set (see profileguard.repair.loop); never exits on a
        database error."""
        loop.run_forever(self, stop_event)

"""Drift: profiles whose `follow`/`fill_empty` columns disagree with their user, and their repair.

The UPDATE trigger keeps profiles in step inside the user's own transaction; what it could not do
(a constraint rejected the value, a lock was held) it records as a 'failure' event with source
'sync'. The worker's drift pass is level-triggered like its creation pass: it reads those events
(the trigger's queue: `auth.users` has no index on `updated_at` to find recent changes by), the
users whose retry is due, and now and then one bounded step of a full pass over every user, and
brings the profiles that really disagree back in step with `profileguard.sync_profiles`. The
comparison itself lives in the database (`profileguard.find_drift`, generated from the installed
mapping), so the worker and the trigger never disagree on what "in step" means. Soft-deleted users
are never followed: their redacted columns are cleared instead.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard.config import Settings
from profileguard.db import connect, is_transient, translate
from profileguard.errors import NotInstalledError
from profileguard.installation import Installation, require_current

log = logging.getLogger(__name__)

SOURCE = "drift"
MESSAGE_LIMIT = 2000


@dataclass
class DriftResult:
    """What one drift pass (or step) did."""

    checked: int = 0
    found: int = 0
    fixed: int = 0
    failed: int = 0

    def add(self, other: DriftResult) -> None:
        self.checked += other.checked
        self.found += other.found
        self.fixed += other.fixed
        self.failed += other.failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriftReport:
    """`profileguard drift`: every profile out of step now, by column, with a sample."""

    scanned: int = 0
    drifted: int = 0
    by_column: dict[str, int] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)
    pending: int = 0
    last_full_pass: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key(installed: Installation) -> sql.Composable:
    # The type text comes from format_type() in the catalog, never from configuration.
    return sql.SQL(installed.require_key_type())


def require_drift(conn: psycopg.Connection) -> Installation:
    """What is installed; NotInstalledError naming `profileguard upgrade` when it has no drift
    functions yet."""
    require_current(conn, missing="drift repair")
    installed = Installation.require(conn)
    key = installed.require_key_type()
    row = conn.execute(
        "select to_regprocedure(%s)", (f"profileguard.find_drift({key}[], {key}, integer)",)
    ).fetchone()
    if not (row and row[0]):
        raise NotInstalledError(
            "profileguard's drift functions are missing", hint="run: profileguard upgrade"
        )
    return installed


def find_drift(
    conn: psycopg.Connection,
    installed: Installation,
    *,
    ids: Sequence[Any] | None = None,
    after: Any = None,
    scan: int = 10_000,
) -> dict[str, Any]:
    """One call of profileguard.find_drift: for `ids`, or the `scan` users after `after`."""
    key = _key(installed)
    query = sql.SQL(
        "select profileguard.find_drift(%(ids)s::text[]::{k}[], %(after)s::text::{k}, %(scan)s)"
    ).format(k=key)
    row = conn.execute(
        query,
        {
            "ids": None if ids is None else [str(i) for i in ids],
            "after": None if after is None else str(after),
            "scan": scan,
        },
    ).fetchone()
    return dict(row[0]) if row and row[0] else {"scanned": 0, "last": None, "drift": []}


def report(settings: Settings, *, scan: int = 10_000, sample: int = 20) -> DriftReport:
    """Every profile out of step with its user now (a read-only walk of all users, in steps)."""
    conn = connect(settings)
    try:
        conn.execute("set transaction read only")
        installed = require_drift(conn)
        result = DriftReport()
        after: Any = None
        while True:
            step = find_drift(conn, installed, after=after, scan=scan)
            result.scanned += int(step["scanned"])
            for item in step["drift"]:
                result.drifted += 1
                for column in item["columns"]:
                    result.by_column[column] = result.by_column.get(column, 0) + 1
                if len(result.sample) < sample:
                    result.sample.append(item)
            if int(step["scanned"]) < scan or step["last"] is None:
                break
            after = step["last"]
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute("select count(*) as n from profileguard.drift_state").fetchone()
            result.pending = int(row["n"]) if row else 0
            passed = cur.execute(
                "select completed_at, completed_scanned, completed_found, cursor, scanned"
                " from profileguard.drift_pass"
            ).fetchone()
        result.last_full_pass = _jsonable(passed) if passed else None
        return result
    except psycopg.Error as exc:
        raise translate(exc, context="drift") from exc
    finally:
        conn.rollback()
        conn.close()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


class DriftRepair:
    """The worker's drift pass: incremental from the trigger's recorded failures and due retries,
    plus bounded steps of a rare full pass. Holds one connection; not thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch_size: int = 500,
        full_step: int = 50_000,
        full_interval: float = 3600.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 300.0,
    ):
        self.settings = settings
        self.batch_size = batch_size
        self.full_step = full_step
        self.full_interval = full_interval
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._conn: psycopg.Connection | None = None
        self._installed: Installation | None = None
        self._cursor: int | None = None
        self._full_due = False
        self._lock = threading.Lock()
        # Users a notification named as not synced and not recorded (the events table locked
        # too), kept until they are checked: nothing in the database remembers them.
        self._told: set[str] = set()

    def tell(self, ids: Sequence[str] | None) -> None:
        """Users the update trigger could neither sync nor record; None: it could not name them
        (a bulk update), so a full pass is due."""
        with self._lock:
            if ids is None:
                self._full_due = True
            else:
                self._told.update(str(i) for i in ids)

    # ------------------------------------------------------------ connection

    def _connection(self) -> tuple[psycopg.Connection, Installation]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._conn = connect(self.settings)
            try:
                self._installed = require_drift(conn)
            finally:
                conn.rollback()
        assert self._installed is not None
        return conn, self._installed

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _run(self, fn: Any) -> Any:
        """fn(conn, installed) in a transaction; one retry after a transient error."""
        for attempt in (1, 2):
            conn, installed = self._connection()
            try:
                with conn.transaction():
                    return fn(conn, installed)
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    self.close()
                if attempt == 1 and is_transient(exc):
                    continue
                raise translate(exc, context="drift") from exc
        return None

    # ------------------------------------------------------------ repair

    def fix(
        self, conn: psycopg.Connection, installed: Installation, items: Sequence[dict[str, Any]]
    ) -> DriftResult:
        """Bring these drifted profiles in step; failures are split until isolated, then noted
        (backoff, failure event). Runs in the caller's transaction."""
        result = DriftResult(found=len(items))
        if not items:
            return result
        columns = {str(i["user_id"]): list(i["columns"]) for i in items}
        failures: list[tuple[str, str | None, str]] = []
        fixed = self._sync(conn, installed, list(columns), failures)
        result.fixed = fixed
        result.failed = len(failures)
        done = [uid for uid in columns if uid not in {f[0] for f in failures}]
        if done:
            conn.execute(
                "delete from profileguard.drift_state where user_id = any(%s::text[])", (done,)
            )
        for uid, state, message in failures:
            self._note_failure(conn, uid, columns[uid], state, message)
        return result

    def _sync(
        self,
        conn: psycopg.Connection,
        installed: Installation,
        ids: list[str],
        failures: list[tuple[str, str | None, str]],
    ) -> int:
        query = sql.SQL(
            "select profileguard.sync_profiles(%(ids)s::text[]::{k}[], %(source)s)"
        ).format(k=_key(installed))
        try:
            with conn.transaction():
                row = conn.execute(query, {"ids": ids, "source": SOURCE}).fetchone()
            return int(row[0]) if row and row[0] is not None else 0
        except psycopg.Error as exc:
            if is_transient(exc) or conn.broken:
                raise
            if len(ids) == 1:
                message = (exc.diag.message_primary if exc.sqlstate else None) or str(exc)
                failures.append((ids[0], exc.sqlstate, message[:MESSAGE_LIMIT]))
                return 0
            middle = len(ids) // 2
            return self._sync(conn, installed, ids[:middle], failures) + self._sync(
                conn, installed, ids[middle:], failures
            )

    def _note_failure(
        self,
        conn: psycopg.Connection,
        uid: str,
        columns: list[str],
        state: str | None,
        message: str,
    ) -> None:
        """One more attempt: capped full-jitter backoff, and a failure event (source 'drift')."""
        row = conn.execute(
            "insert into profileguard.drift_state as d (user_id, columns, attempts,"
            " next_attempt_at, last_sqlstate, last_message)"
            " values (%(u)s, %(c)s, 1, now(), %(s)s, %(m)s)"
            " on conflict (user_id) do update set columns = excluded.columns,"
            " attempts = d.attempts + 1, last_sqlstate = excluded.last_sqlstate,"
            " last_message = excluded.last_message, updated_at = now()"
            " returning attempts",
            {"u": uid, "c": columns, "s": state, "m": message},
        ).fetchone()
        attempts = int(row[0]) if row else 1
        delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** min(attempts, 30)))
        conn.execute(
            "update profileguard.drift_state set next_attempt_at = now()"
            " + make_interval(secs => %(d)s) where user_id = %(u)s",
            {"d": delay, "u": uid},
        )
        conn.execute(
            "insert into profileguard.events (kind, source, user_id, sqlstate, category,"
            " message, detail) values ('failure', %(src)s, %(u)s, %(s)s,"
            " profileguard.sqlstate_category(%(s)s), %(m)s, %(d)s)",
            {
                "src": SOURCE,
                "u": uid,
                "s": state,
                "m": message,
                "d": psycopg.types.json.Jsonb({"columns": columns, "attempts": attempts}),
            },
        )

    # ------------------------------------------------------------ passes

    def run_incremental(self, stop_event: threading.Event | None = None) -> DriftResult:
        """Users the trigger could not sync (failure events since the last look) and users whose
        retry is due: those whose profile really disagrees are brought in step."""
        total = DriftResult()
        with self._lock:
            told = sorted(self._told)
        if told:

            def named(conn: psycopg.Connection, installed: Installation) -> DriftResult:
                return self._check_and_fix(conn, installed, told)

            total.add(self._run(named))  # raises while locked: they stay told
            with self._lock:
                self._told.difference_update(told)
        if self._cursor is None:
            self._cursor = 0
        while stop_event is None or not stop_event.is_set():
            cursor = self._cursor

            def step(
                conn: psycopg.Connection, installed: Installation, cursor: int = cursor
            ) -> tuple[int | None, DriftResult]:
                rows = conn.execute(
                    "select e.id, e.user_id from profileguard.events e"
                    " where e.kind = 'failure' and e.source = 'sync' and e.id > %(after)s"
                    " order by e.id limit %(n)s",
                    {"after": cursor, "n": self.batch_size},
                ).fetchall()
                if not rows:
                    return None, DriftResult()
                if any(r[1] is None for r in rows):  # a bulk update's failure names no user
                    self._full_due = True
                ids = list(dict.fromkeys(str(r[1]) for r in rows if r[1] is not None))
                return int(rows[-1][0]), self._check_and_fix(conn, installed, ids)

            last, part = self._run(step)
            total.add(part)
            if last is None:
                break
            self._cursor = last

        def due(conn: psycopg.Connection, installed: Installation) -> DriftResult:
            rows = conn.execute(
                "select user_id from profileguard.drift_state where next_attempt_at <= now()"
                " order by next_attempt_at limit %(n)s",
                {"n": self.batch_size},
            ).fetchall()
            return self._check_and_fix(conn, installed, [str(r[0]) for r in rows])

        if stop_event is None or not stop_event.is_set():
            total.add(self._run(due))
        if self._full_due and (stop_event is None or not stop_event.is_set()):
            self._full_due = False
            total.add(self.run_full_step(stop_event, force=True))
        return total

    def _check_and_fix(
        self, conn: psycopg.Connection, installed: Installation, ids: list[str]
    ) -> DriftResult:
        if not ids:
            return DriftResult()
        found = find_drift(conn, installed, ids=ids)
        drifted = list(found["drift"])
        in_step = sorted(set(ids) - {str(i["user_id"]) for i in drifted})
        if in_step:  # in step again (fixed by a later update, or the user is gone)
            conn.execute(
                "delete from profileguard.drift_state where user_id = any(%s::text[])", (in_step,)
            )
        result = self.fix(conn, installed, drifted)
        result.checked = len(ids)
        return result

    def run_full_step(
        self, stop_event: threading.Event | None = None, *, force: bool = False
    ) -> DriftResult:
        """One bounded step (`full_step` users) of the full pass, resumed where the last step
        stopped; a new pass starts `full_interval` seconds after the last one completed (at once
        with `force`). The step's position survives restarts (profileguard.drift_pass)."""
        total = DriftResult()

        def step(conn: psycopg.Connection, installed: Installation) -> tuple[bool, DriftResult]:
            state = conn.execute(
                "select cursor, completed_at is null or completed_at"
                " < now() - make_interval(secs => %(i)s) or %(force)s or cursor is not null"
                " from profileguard.drift_pass for update skip locked",
                {"i": self.full_interval, "force": force},
            ).fetchone()
            if state is None or not state[1]:
                return True, DriftResult()  # another worker holds it, or not due
            cursor = state[0]
            found = find_drift(
                conn, installed, after=cursor, scan=min(self.batch_size * 20, self.full_step)
            )
            part = self.fix(conn, installed, list(found["drift"]))
            part.checked = int(found["scanned"])
            finished = int(found["scanned"]) < min(self.batch_size * 20, self.full_step)
            conn.execute(
                "update profileguard.drift_pass set"
                " started_at = case when cursor is null then now() else started_at end,"
                " scanned = case when cursor is null then 0 else scanned end + %(s)s,"
                " found = case when cursor is null then 0 else found end + %(f)s,"
                " fixed = case when cursor is null then 0 else fixed end + %(x)s,"
                " cursor = %(c)s, updated_at = now()",
                {
                    "s": part.checked,
                    "f": part.found,
                    "x": part.fixed,
                    "c": None if finished else str(found["last"]),
                },
            )
            if finished:
                conn.execute(
                    "update profileguard.drift_pass set completed_at = now(),"
                    " completed_scanned = scanned, completed_found = found"
                )
            return finished, part

        while total.checked < self.full_step and (stop_event is None or not stop_event.is_set()):
            finished, part = self._run(step)
            total.add(part)
            if finished:
                break
        return total


__all__ = ["DriftRepair", "DriftReport", "DriftResult", "find_drift", "report", "require_drift"]

"""What the profile table's catalog asks of every statement that writes it, decided at install:
its deferrable constraints (checked where a violation can still be caught) and the lock waits
one write can make (each gets a share of the sign-up's lock budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.catalog import TableFacts, table_oid

# The failure path's budget (recording the failure, the retry with a suffixed username) on top of
# the sign-up's lock_timeout_ms: a sign-up whose tables are all locked waits at most the sum.
RECORD_LOCK_MS = 50


@dataclass(frozen=True)
class Deferrable:
    """One deferrable constraint of the profile table (a key, an exclusion, a foreign key or a
    constraint trigger), as SET CONSTRAINTS names it."""

    schema: str
    name: str
    initially_deferred: bool
    kind: str
    on_key: bool  # a primary key or unique constraint on the profile key alone: a conflict arbiter


@dataclass(frozen=True)
class LockBudget:
    """Per-wait lock timeouts that keep a sign-up's (or an update's) waits within its budget.

    One INSERT can wait once for the profile table and once per unique or exclusion index (a
    key held by an in-flight transaction; not the profile key's index, as no other transaction
    holds a new user's key); a function cannot arm a timeout per statement, only per wait, so
    the budget is divided by the number of waits. An UPDATE may also wait for the row (its tuple
    lock, then its writer)."""

    budget_ms: int
    record_ms: int
    indexes: int

    @property
    def insert_waits(self) -> int:
        return self.indexes + 1

    @property
    def per_wait_ms(self) -> int:
        return max(1, self.budget_ms // self.insert_waits)

    @property
    def record_per_wait_ms(self) -> int:
        """The failure path: the retry's waits and the events table's."""
        return max(1, self.record_ms // (self.insert_waits + 1))

    @property
    def sync_per_wait_ms(self) -> int:
        return max(1, self.budget_ms // (self.insert_waits + 2))

    @property
    def bound_ms(self) -> int:
        """The longest a sign-up waits for locks in all (an update: its waits share budget_ms
        too, plus record_ms to record a failure)."""
        return (
            self.insert_waits * self.per_wait_ms + (self.insert_waits + 1) * self.record_per_wait_ms
        )


@dataclass(frozen=True)
class Guards:
    """The profile table's deferrable constraints and how many indexes a write may wait on."""

    deferrable: tuple[Deferrable, ...] = ()
    indexes: int = 0

    def budget(self, budget_ms: int) -> LockBudget:
        return LockBudget(budget_ms, min(budget_ms, RECORD_LOCK_MS), self.indexes)


def read_guards(conn: psycopg.Connection, profile: TableFacts, key: str) -> Guards:
    """The catalog's answer for `profile`; for a table not created yet, its planned unique keys."""
    oid = table_oid(conn, profile.ref)
    if oid is None:
        return Guards((), len(profile.unique - {key}))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            sqlfiles.query("deferrable_constraints"), {"oid": oid, "key": key}
        ).fetchall()
        count = cur.execute(
            sqlfiles.query("lock_waiting_indexes"), {"oid": oid, "key": key}
        ).fetchone()
    deferrable = tuple(
        Deferrable(
            str(r["schema"]),
            str(r["name"]),
            bool(r["initially_deferred"]),
            str(r["kind"]),
            bool(r["on_key"]),
        )
        for r in rows
    )
    return Guards(deferrable, int(count["count"]) if count else 0)


def deferred_check(guards: Guards, indent: int) -> sql.Composable:
    """Statements that run the profile table's deferrable constraints now (a violation raised
    where the caller's exception block catches it), then put the initially deferred ones back to
    deferred. Empty without deferrable constraints: the common path pays nothing.

    PostgreSQL cannot tell a function the mode a caller chose with its own SET CONSTRAINTS: after
    this the constraints are in their declared mode, whatever the caller had set."""
    if not guards.deferrable:
        return sql.SQL("")
    pad = "\n" + " " * indent
    lines: list[sql.Composable] = [
        sql.SQL(
            pad + "-- Deferrable constraints checked here, where a violation is caught; then "
            "their declared mode."
        ),
        *_set_constraints(list(guards.deferrable), "immediate", pad),
    ]
    deferred = [d for d in guards.deferrable if d.initially_deferred]
    if deferred:
        lines.extend(_set_constraints(deferred, "deferred", pad))
    return sql.Composed(lines)


def _set_constraints(constraints: list[Deferrable], mode: str, pad: str) -> list[sql.Composable]:
    """One SET CONSTRAINTS per line-sized group of names (installed lines stay under 120)."""
    groups: list[list[Deferrable]] = [[]]
    width = len(pad) + len("set constraints  immediate;")
    for constraint in constraints:
        size = len(constraint.schema) + len(constraint.name) + 7  # quotes, dot, comma, space
        if groups[-1] and width + size > 120:
            groups.append([])
            width = len(pad) + len("set constraints  immediate;")
        groups[-1].append(constraint)
        width += size
    return [
        sql.SQL(pad + "set constraints {} " + mode + ";").format(
            sql.SQL(", ").join(sql.Identifier(c.schema, c.name) for c in group)
        )
        for group in groups
    ]

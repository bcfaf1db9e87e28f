"""What the database says about the identity and profile tables (columns, types, constraints)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.config import TableRef


@dataclass(frozen=True)
class Column:
    """One column of a table as the catalog describes it."""

    name: str
    type: str
    category: str
    not_null: bool
    has_default: bool
    generated: bool
    max_length: int | None
    default_expr: str | None = None  # schema-qualified, as pg_get_expr prints it

    @property
    def is_text(self) -> bool:
        """A string type (text, varchar, char, citext…): it can hold a username."""
        return self.category == "S"

    @property
    def is_json(self) -> bool:
        return self.type in ("json", "jsonb")


@dataclass(frozen=True)
class TableFacts:
    """Columns, single-column unique keys and check constraints of one table."""

    ref: TableRef
    columns: dict[str, Column]
    unique: frozenset[str]
    checks: tuple[str, ...]

    def length_bounds(self, column: str) -> tuple[int | None, int | None]:
        """(min, max) character lengths that check constraints or the type impose on `column`."""
        low: int | None = None
        high = self.columns[column].max_length
        name = re.escape(column)
        # char_length(c), char_length((c)::text) (varchar columns), length(c::text)
        func = (
            r"(?:char_length|character_length|length)\(\(?\s*\"?"
            + name
            + r"\"?\s*\)?(?:::[\w ]+(?:\(\d+\))?)?\s*\)"
        )
        for definition in self.checks:
            for op, number in re.findall(func + r"\s*(>=|>|<=|<)\s*(\d+)", definition):
                n = int(number)
                if op in (">=", ">"):
                    n = n + 1 if op == ">" else n
                    low = n if low is None else max(low, n)
                else:
                    n = n - 1 if op == "<" else n
                    high = n if high is None else min(high, n)
        return low, high


def regclass_text(conn: psycopg.Connection, ref: TableRef) -> str:
    """The quoted, schema-qualified name of `ref`, as to_regclass() expects it."""
    return sql.Identifier(ref.schema, ref.name).as_string(conn)


def table_oid(conn: psycopg.Connection, ref: TableRef) -> int | None:
    """The table's oid, or None when it does not exist."""
    row = conn.execute(sqlfiles.query("table_oid"), {"table": regclass_text(conn, ref)}).fetchone()
    return None if row is None or row[0] is None else int(row[0])


@contextlib.contextmanager
def qualified(conn: psycopg.Connection) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
    """A cursor whose queries see an empty search_path, so the catalog prints every name
    schema-qualified. The setting is local to a transaction (a savepoint inside one, put back
    at its end): a session setting would stay on a pooler's server connection for its next
    client, and an autocommit connection's next statement may run on another one."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("select pg_catalog.current_setting('search_path') as path").fetchone()
        cur.execute("select pg_catalog.set_config('search_path', '', true)")
        yield cur
        # (After an error the savepoint's or transaction's rollback puts it back.)
        path = row["path"] if row else ""
        cur.execute("select pg_catalog.set_config('search_path', %s, true)", (path,))


def inspect_table(conn: psycopg.Connection, ref: TableRef) -> TableFacts | None:
    """Describe `ref`, or return None when the table does not exist.

    Types are formatted with an empty search_path so that they are schema-qualified, as the
    generated functions (which search only pg_catalog and, last, pg_temp) need them.
    """
    oid = table_oid(conn, ref)
    if oid is None:
        return None
    with qualified(conn) as cur:
        cur.execute(sqlfiles.query("table_columns"), {"oid": oid})
        columns = {r["name"]: Column(**r) for r in cur.fetchall()}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sqlfiles.query("unique_columns"), {"oid": oid})
        unique = frozenset(r["name"] for r in cur.fetchall())
        cur.execute(sqlfiles.query("check_constraints"), {"oid": oid})
        checks = tuple(r["definition"] for r in cur.fetchall())
    return TableFacts(ref, columns, unique, checks)

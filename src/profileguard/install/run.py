"""How install runs its statements: recorded (and run, unless only rendering) in one
transaction, and what it reports back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from profileguard.config import Settings, TableRef
from profileguard.db import connect, translate
from profileguard.install.preflight import Preflight
from profileguard.mapping import Plan


@dataclass
class InstallResult:
    """What an install or upgrade did."""

    version_before: int
    version_after: int
    created_profile_table: bool = False
    changed: bool = False
    statements: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    replaced_triggers: list[str] = field(default_factory=list)
    preflight: Preflight | None = None
    plan: Plan | None = field(default=None, repr=False)  # for the identity phase
    # The package or the configuration differs from the installed one (the flags aside): what the
    # functions and the triggers are rendered from changed.
    config_changed: bool = False
    # The tables the identity phase's statements lock (the identity table; the profile table too
    # when its foreign key is added).
    locked_tables: list[TableRef] = field(default_factory=list)
    # Rendering only: how many of the last statements lock the identity table, the precondition
    # check that stops the rendered file on another database (render_preconditions.sql), and the
    # retried lock taken right before those statements (render_lock.sql; empty when none).
    identity_statements: int = 0
    preconditions: str = ""
    identity_lock: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "version_before": self.version_before,
            "version_after": self.version_after,
            "created_profile_table": self.created_profile_table,
            "changed": self.changed,
            "notes": self.notes,
            "replaced_triggers": self.replaced_triggers,
            "preflight": None if self.preflight is None else self.preflight.as_dict(),
        }


class Recorder:
    """Renders SQL to text and keeps it; runs it too unless only rendering (`profileguard sql`).

    Statements carry their values as literals, so the text kept is exactly the text run.
    """

    def __init__(self, conn: psycopg.Connection, *, execute: bool = True):
        self.conn = conn
        self.execute = execute
        self.statements: list[str] = []

    def run(self, statement: str | sql.Composable) -> None:
        text = statement if isinstance(statement, str) else statement.as_string(self.conn)
        self.statements.append(text.strip())
        if self.execute:
            self.conn.execute(text)


@contextmanager
def transaction(settings: Settings, *, dry_run: bool = False) -> Iterator[psycopg.Connection]:
    """One connection, one transaction: committed on success, rolled back on error or dry run."""
    conn = connect(settings)
    try:
        yield conn
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        raise translate(exc) from exc
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()

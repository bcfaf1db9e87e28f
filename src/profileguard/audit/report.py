"""What the audit reports (Finding, AuditReport) and what each check looks at (Context)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.catalog import TableFacts
from profileguard.config import Settings
from profileguard.errors import ConfigError
from profileguard.installation import Installation, table_sql
from profileguard.mapping import Plan, build_plan

SEVERITIES = ("error", "warning", "info")


AUDIT_SQL = "queries/audit.sql"


@dataclass(frozen=True)
class Finding:
    """One problem (or fact) the audit found: how bad, why we think so, how to fix it."""

    code: str
    severity: str
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "evidence": self.evidence,
            "fix": self.fix,
        }


@dataclass
class AuditReport:
    """Every finding, most severe first, and a summary of profileguard's own state."""

    findings: list[Finding]
    state: dict[str, Any]

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def has_errors(self) -> bool:
        return self.count("error") > 0

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": {s: self.count(s) for s in SEVERITIES},
            "state": self.state,
            "findings": [f.as_dict() for f in self.findings],
        }


@dataclass
class Context:
    """What every check may look at; gathered once per audit."""

    conn: psycopg.Connection
    settings: Settings
    identity: TableFacts | None
    profile: TableFacts | None
    version: int
    installed: Installation | None
    roles: list[str]
    state: dict[str, Any] = field(default_factory=dict)
    _plan: Plan | ConfigError | None = None

    @property
    def identity_sql(self) -> sql.Identifier:
        return table_sql(self.settings.identity)

    @property
    def profile_sql(self) -> sql.Identifier:
        return table_sql(self.settings.profile)

    def text(self, composable: sql.Composable) -> str:
        return composable.as_string(self.conn)

    def rows(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        parts: dict[str, sql.Composable] | None = None,
    ) -> list[dict[str, Any]]:
        """Run the named query of audit.sql; {x} parts are composed identifiers."""
        query = sql.SQL(sqlfiles.query(name, AUDIT_SQL)).format(**(parts or {}))
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, params if params is not None else {}).fetchall()

    def plan(self) -> Plan | ConfigError:
        if self._plan is None:
            try:
                self._plan = build_plan(self.conn, self.settings)
            except ConfigError as exc:
                self._plan = exc
        return self._plan

    @property
    def enabled(self) -> bool:
        return bool(self.installed and self.installed.enabled)


# One check of the audit: what it finds in the Context (each module of this package holds some).
AuditCheck = Callable[[Context], list[Finding]]


def iso(value: Any) -> Any:
    """A timestamp as ISO 8601 text (JSON-friendly evidence); other values as they are."""
    return value.isoformat() if isinstance(value, datetime) else value

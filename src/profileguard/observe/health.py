"""The health verdict, from the invariant "every user has a profile".

The verdict is computed in one place, `profileguard.health()` (sql/functions/observe.sql), with
the [alerts] thresholds that install stored; `profileguard status`, `/api/status`, `/metrics`, the
dashboard, the alert rules and SQL callers (pg_cron, the SQL editor) all read that one verdict:

* healthy: no user has lacked a profile for longer than alerts.missing_grace_seconds;
* degraded: one has (the worker repairs within seconds, so this is rare and short);
* unhealthy: one has for longer than alerts.repair_slo_seconds, or the trigger is disabled or
  missing. Quarantined users are missing users: they count toward the invariant.

Trigger failures, quarantine, silent workers, a stalled backfill and drift are warnings: they
are checks and alerts of their own but do not change the verdict while every user has a profile.
What only this process can tell is added here as checks that are warnings too: whether the
[alerts] thresholds it was configured with are the installed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import psycopg

from profileguard.config import AlertSettings, Settings
from profileguard.db import translate
from profileguard.errors import ExitCode, NotInstalledError
from profileguard.observe.stats import (
    alert_states,
    open_connection,
    quarantine,
    refresh,
    require_monitoring,
)

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
Severity = Literal["warning", "critical"]
EXIT_CODES: dict[str, ExitCode] = {
    "healthy": ExitCode.OK,
    "degraded": ExitCode.DEGRADED,
    "unhealthy": ExitCode.UNHEALTHY,
}
LEVEL: dict[HealthStatus, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@dataclass(frozen=True)
class Check:
    """One check of the verdict, which is also an alert rule: its status is 'ok' or, while it
    holds, its severity; `verdict` is what it makes the verdict while it holds (None: a warning
    only)."""

    name: str
    status: Literal["ok", "warning", "critical"]
    message: str
    value: float | None = None
    threshold: float | None = None
    severity: Severity = "warning"
    verdict: HealthStatus | None = None

    @property
    def active(self) -> bool:
        return self.status != "ok"

    @classmethod
    def from_sql(cls, row: dict[str, Any]) -> Check:
        """A check as profileguard.health() lists it."""
        return cls(
            name=str(row["name"]),
            status=cast(Literal["ok", "warning", "critical"], row["status"]),
            message=str(row["message"]),
            value=None if row.get("value") is None else float(row["value"]),
            threshold=None if row.get("threshold") is None else float(row["threshold"]),
            severity=cast(Severity, row["severity"]),
            verdict=cast(HealthStatus | None, row.get("verdict")),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Health:
    """One reading of the verdict: its status, every check, the figures and the thresholds it
    was judged by."""

    status: HealthStatus
    checks: tuple[Check, ...]
    stats: dict[str, Any]
    thresholds: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return int(EXIT_CODES[self.status])

    @property
    def active(self) -> list[str]:
        """The checks that hold: the alerts that fire."""
        return [c.name for c in self.checks if c.active]

    @property
    def warnings(self) -> list[str]:
        """Checks that hold without changing the verdict."""
        return [c.name for c in self.checks if c.active and c.verdict is None]


def _toml(value: Any) -> str:
    """A threshold as profileguard.toml writes it (10, 99.5, true)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def thresholds_check(installed: dict[str, Any], cfg: AlertSettings) -> Check:
    """Whether this process's [alerts] thresholds are those the verdict is judged by (the ones
    install stored); a warning, since the verdict stays the installed one either way."""
    here = cfg.thresholds()
    differ = [key for key, value in here.items() if installed.get(key) != value]
    if not differ:
        return Check(
            "thresholds", "ok", "the [alerts] thresholds here are the installed ones", 0, 0
        )
    shown = ", ".join(
        f"{key} {_toml(here[key])} here, {_toml(installed.get(key))} installed" for key in differ
    )
    return Check(
        "thresholds",
        "warning",
        f"the [alerts] thresholds here differ from the installed ones ({shown}); the verdict "
        "uses the installed ones; to install these, run: profileguard upgrade",
        len(differ),
        0,
    )


def read_health(conn: psycopg.Connection, cfg: AlertSettings) -> Health:
    """The verdict as profileguard.health() gives it, with the checks only this process can make
    (they never change the status)."""
    try:
        row = conn.execute("select profileguard.health()").fetchone()
    except psycopg.Error as exc:
        raise translate(exc, context="reading profileguard.health()") from exc
    doc: dict[str, Any] = dict(row[0]) if row else {}
    if "checks" not in doc:
        raise NotInstalledError(
            "profileguard.health() in this database is older than this package (it lists no "
            "checks)",
            hint="run: profileguard upgrade",
        )
    installed = dict(doc.get("thresholds") or {})
    checks = tuple(Check.from_sql(c) for c in doc.get("checks") or [])
    return Health(
        status=cast(HealthStatus, doc.get("status", "unhealthy")),
        checks=(*checks, thresholds_check(installed, cfg)),
        stats=dict(doc.get("stats") or {}),
        thresholds=installed,
    )


def status(
    settings: Settings,
    *,
    refresh_if_older_than: float | None = None,
    with_lists: bool = True,
    conn: psycopg.Connection | None = None,
) -> dict[str, Any]:
    """Figures, verdict, alert states (and the quarantine list): what `profileguard status` and
    `/api/status` show. Runs the full sweep first when the counts are older than
    `refresh_if_older_than` seconds (default: alerts.refresh_interval_seconds); the bounded check
    of the invariant runs with every read. Uses `conn` (autocommit) when given."""
    cfg = settings.alerts
    limit = cfg.refresh_interval_seconds if refresh_if_older_than is None else refresh_if_older_than
    own = conn is None
    conn = conn or open_connection(settings)
    try:
        require_monitoring(conn)
        health = read_health(conn, cfg)
        if float(health.stats.get("count_age_seconds") or 0) > limit:
            refresh(conn)
            health = read_health(conn, cfg)
        return build_status(conn, health, with_lists=with_lists)
    finally:
        if own:
            conn.close()


def summary(health: Health) -> dict[str, Any]:
    """The verdict's own fields of the status document."""
    missing = int(health.stats.get("missing") or 0)
    return {
        "status": health.status,
        "exit_code": health.exit_code,
        "missing": missing,
        "oldest_missing_age_seconds": float(health.stats.get("oldest_missing_age_seconds") or 0)
        if missing
        else 0.0,
        "firing": health.active,
        "warnings": health.warnings,
    }


def build_status(conn: psycopg.Connection, health: Health, *, with_lists: bool) -> dict[str, Any]:
    """The status document for a verdict already read."""
    result: dict[str, Any] = {
        **summary(health),
        "checks": [c.as_dict() for c in health.checks],
        "thresholds": health.thresholds,
        "stats": health.stats,
        "alerts": alert_states(conn),
    }
    if with_lists:
        result["quarantine"] = quarantine(conn, limit=50)
    return result

"""The health verdict, from the invariant "every user has a profile".

One evaluation (`evaluate`) turns the figures into checks and a verdict; `profileguard status`,
`/api/status`, `/metrics`, the dashboard and the alert rules all show that one evaluation:

* healthy: no user has lacked a profile for longer than alerts.missing_grace_seconds;
* degraded: one has (the worker repairs within seconds, so this is rare and short);
* unhealthy: one has for longer than alerts.repair_slo_seconds, or the trigger is disabled or
  missing. Quarantined users are missing users: they count toward the invariant.

Trigger failures, quarantine, silent workers, a stalled backfill and drift are warnings: they
are checks and alerts of their own but do not change the verdict while every user has a profile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from profileguard.config import AlertSettings, Settings
from profileguard.errors import ExitCode
from profileguard.observe.stats import (
    alert_states,
    open_connection,
    quarantine,
    read_stats,
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
class Condition:
    """What a rule sees in the figures: whether it holds, the value and the threshold."""

    active: bool
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True)
class Rule:
    """One check and alert rule: a name, its severity, the verdict it forces while it holds
    (None: a warning only) and the check on the figures."""

    name: str
    severity: Severity
    summary: str
    check: Callable[[dict[str, Any], AlertSettings], Condition]
    verdict: HealthStatus | None = None


def _missing_age(stats: dict[str, Any]) -> tuple[int, float]:
    missing = int(stats.get("missing") or 0)
    return missing, float(stats.get("oldest_missing_age_seconds") or 0) if missing else 0.0


def _enabled(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    on = bool(stats.get("enabled"))
    return Condition(
        not on,
        1 if on else 0,
        1,
        "the trigger is enabled" if on else "profileguard is disabled; run: profileguard enable",
    )


def _trigger(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    there = bool(stats.get("trigger_installed"))
    table = stats.get("identity_table")
    return Condition(
        not there,
        1 if there else 0,
        1,
        f"trigger present on {table}"
        if there
        else f"the signup trigger on {table} is missing or disabled; run: profileguard install",
    )


def _missing(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    missing, age = _missing_age(stats)
    if not missing:
        return Condition(False, 0, cfg.missing_grace_seconds, "every user has a profile")
    within = age <= cfg.missing_grace_seconds
    return Condition(
        not within,
        age,
        cfg.missing_grace_seconds,
        f"{missing} users have no profile, the oldest for {age:.0f}s "
        + (
            f"(within the grace of {cfg.missing_grace_seconds:.0f}s)"
            if within
            else f"(grace {cfg.missing_grace_seconds:.0f}s); repair them: profileguard worker"
        ),
    )


def _slo(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    missing, age = _missing_age(stats)
    late = missing > 0 and age > cfg.repair_slo_seconds
    return Condition(
        late,
        age,
        cfg.repair_slo_seconds,
        f"a user has had no profile for {age:.0f}s, beyond the repair SLO of "
        f"{cfg.repair_slo_seconds:.0f}s; see the quarantine and the worker: profileguard status"
        if late
        else f"no user has waited longer than the repair SLO of {cfg.repair_slo_seconds:.0f}s",
    )


def _success(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    rate = stats.get("success_rate_pct")
    signups = int(stats.get("signups_window") or 0)
    failures = int(stats.get("trigger_failures_window") or 0)
    active = (
        rate is not None
        and max(signups, failures) >= cfg.success_rate_min_signups
        and float(rate) < cfg.success_rate_min_pct
    )
    covered = float(stats.get("window_covered_seconds") or 0)
    message = (
        f"no signups in the last {covered:.0f}s"
        if rate is None
        else f"trigger success rate {float(rate):.2f}% over the last {covered:.0f}s "
        f"({failures} failures in {signups} signups; minimum {cfg.success_rate_min_pct}% "
        f"from {cfg.success_rate_min_signups} signups); the worker repairs what it misses"
    )
    return Condition(
        active, None if rate is None else float(rate), cfg.success_rate_min_pct, message
    )


def _quarantine(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    count = int(stats.get("quarantined") or 0)
    return Condition(
        count > cfg.quarantine_threshold,
        count,
        cfg.quarantine_threshold,
        f"{count} quarantined users (threshold {cfg.quarantine_threshold}); fix the cause, "
        "then run: profileguard retry --all-quarantined"
        if count
        else "nobody is quarantined",
    )


def _worker(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    live = int(stats.get("live_workers") or 0)
    registered = len(stats.get("workers") or [])
    if registered == 0 and not cfg.worker_required:
        message = "no worker registered (alerts.worker_required is off)"
    else:
        message = (
            f"{live} of {registered} registered workers are live (heartbeat within "
            f"{cfg.worker_heartbeat_max_age_seconds:.0f}s)"
            + ("" if live else "; start one: profileguard worker")
        )
    return Condition(live == 0 and (cfg.worker_required or registered > 0), live, 1, message)


def _backfill(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    run = stats.get("backfill") or {}
    stalled = bool(run.get("stalled"))
    age = run.get("update_age_seconds")
    return Condition(
        stalled,
        None if age is None else float(age),
        cfg.backfill_stall_seconds,
        f"backfill run {run.get('id')} is running but has not progressed for "
        f"{float(age or 0):.0f}s (threshold {cfg.backfill_stall_seconds:.0f}s)"
        if stalled
        else "no stalled backfill",
    )


def _drift(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    pending = int(stats.get("drift_pending") or 0)
    return Condition(
        pending > 0,
        pending,
        0,
        f"{pending} profiles are out of step with their users and the worker could not bring "
        "them back yet; see: profileguard drift"
        if pending
        else "profiles are in step with their users",
    )


RULES: tuple[Rule, ...] = (
    Rule("enabled", "critical", "profileguard is disabled", _enabled, "unhealthy"),
    Rule("trigger", "critical", "the signup trigger is missing or disabled", _trigger, "unhealthy"),
    Rule(
        "repair_slo",
        "critical",
        "a user has had no profile for longer than the repair SLO",
        _slo,
        "unhealthy",
    ),
    Rule(
        "missing_profiles",
        "warning",
        "a user has had no profile for longer than the grace",
        _missing,
        "degraded",
    ),
    Rule("success_rate", "warning", "trigger success rate below the minimum", _success),
    Rule("quarantine", "warning", "users quarantined by the worker", _quarantine),
    Rule("no_live_worker", "warning", "no worker has a fresh heartbeat", _worker),
    Rule("backfill_stalled", "warning", "a running backfill stopped progressing", _backfill),
    Rule("drift", "warning", "profiles out of step with their users", _drift),
)


@dataclass(frozen=True)
class Check:
    """One line of the verdict: a rule, evaluated."""

    name: str
    status: Literal["ok", "warning", "critical"]
    message: str
    value: float | None = None
    threshold: float | None = None

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
    """One evaluation: the verdict, every check, the conditions behind them, and the figures."""

    status: HealthStatus
    checks: tuple[Check, ...]
    conditions: tuple[tuple[Rule, Condition], ...]
    stats: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return int(EXIT_CODES[self.status])

    @property
    def active(self) -> list[str]:
        """The rules that hold: the alerts that fire."""
        return [c.name for c in self.checks if c.status != "ok"]

    @property
    def warnings(self) -> list[str]:
        """Rules that hold without changing the verdict."""
        return [rule.name for rule, cond in self.conditions if cond.active and not rule.verdict]


def evaluate(stats: dict[str, Any], cfg: AlertSettings, rules: tuple[Rule, ...] = RULES) -> Health:
    """The one evaluation every view shows: the worst verdict of the rules that hold."""
    verdict: HealthStatus = "healthy"
    checks, conditions = [], []
    for rule in rules:
        cond = rule.check(stats, cfg)
        conditions.append((rule, cond))
        checks.append(
            Check(
                rule.name,
                rule.severity if cond.active else "ok",
                cond.message,
                cond.value,
                cond.threshold,
            )
        )
        if cond.active and rule.verdict and LEVEL[rule.verdict] > LEVEL[verdict]:
            verdict = rule.verdict
    return Health(verdict, tuple(checks), tuple(conditions), stats)


def evaluate_health(stats: dict[str, Any], cfg: AlertSettings) -> tuple[HealthStatus, list[Check]]:
    """The verdict and its checks (see `evaluate`)."""
    health = evaluate(stats, cfg)
    return health.status, list(health.checks)


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
        stats = read_stats(conn, cfg)
        if float(stats.get("count_age_seconds") or 0) > limit:
            refresh(conn)
            stats = read_stats(conn, cfg)
        return build_status(conn, stats, cfg, with_lists=with_lists)
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


def build_status(
    conn: psycopg.Connection, stats: dict[str, Any], cfg: AlertSettings, *, with_lists: bool
) -> dict[str, Any]:
    """The status document for figures already read."""
    health = evaluate(stats, cfg)
    result: dict[str, Any] = {
        **summary(health),
        "checks": [c.as_dict() for c in health.checks],
        "stats": stats,
        "alerts": alert_states(conn),
    }
    if with_lists:
        result["quarantine"] = quarantine(conn, limit=50)
    return result

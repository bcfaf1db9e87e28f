"""Observability: figures, a health verdict, alert rules with persistent state, and alert sinks.

The figures come from `profileguard.stats()` (migration 0004), which is cheap at any table size
because a periodic full sweep (`profileguard.refresh_stats()`) does the counting and reads in
between only add what changed since. `status()` turns the figures into a verdict with the
thresholds of the [alerts] section; `AlertManager.evaluate()` turns the same rules into alerts
that fire once and resolve once, however many processes evaluate them, and delivers them to the
log and, when configured, a webhook (Slack-compatible JSON), retrying failed deliveries without
ever raising them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import dict_row

from profileguard.config import AlertSettings, Settings
from profileguard.db import connect, translate
from profileguard.errors import ExitCode, ProfileGuardError
from profileguard.installation import require_version

log = logging.getLogger(__name__)

MONITOR_SCHEMA_VERSION = 4
HealthStatus = Literal["healthy", "degraded", "unhealthy"]
Severity = Literal["warning", "critical"]
EXIT_CODES: dict[str, ExitCode] = {
    "healthy": ExitCode.OK, "degraded": ExitCode.DEGRADED, "unhealthy": ExitCode.UNHEALTHY,
}
# After this many failed delivery rounds a message is dropped (and logged as an error).
MAX_DELIVERY_ROUNDS = 10
USER_AGENT = "profileguard-alerts"


# ---------------------------------------------------------------- figures


def open_connection(settings: Settings) -> psycopg.Connection:
    """An autocommit connection for monitoring reads (stats() also records a small sample)."""
    return connect(settings, autocommit=True)


def require_monitoring(conn: psycopg.Connection) -> int:
    """The installed schema version; raises NotInstalledError when it has no monitoring."""
    try:
        return require_version(conn, MONITOR_SCHEMA_VERSION, missing="monitoring functions")
    except psycopg.Error as exc:
        raise translate(exc) from exc


def read_stats(
    conn: psycopg.Connection, alerts: AlertSettings, *, window_seconds: float | None = None
) -> dict[str, Any]:
    """Every figure, as `profileguard.stats()` returns it (JSON-ready)."""
    window = alerts.success_rate_window_seconds if window_seconds is None else window_seconds
    try:
        row = conn.execute(
            "select profileguard.stats(make_interval(secs => %s), make_interval(secs => %s),"
            " make_interval(secs => %s))",
            (window, alerts.worker_heartbeat_max_age_seconds, alerts.backfill_stall_seconds),
        ).fetchone()
    except psycopg.Error as exc:
        raise translate(exc, context="reading profileguard.stats()") from exc
    stats = dict(row[0]) if row else {}
    stats.update(drift_figures(conn))
    return stats


def drift_figures(conn: psycopg.Connection) -> dict[str, Any]:
    """Profiles out of step with their users (drift.py): those the worker could not bring back
    yet, and what the last complete full pass found. Empty before schema version 14."""
    try:
        row = conn.execute(
            "select to_regclass('profileguard.drift_state') is not null"
        ).fetchone()
        if not (row and row[0]):
            return {}
        with conn.cursor(row_factory=dict_row) as cur:
            found = cur.execute(
                "select (select count(*) from profileguard.drift_state) as drift_pending,"
                " (select min(first_seen_at) from profileguard.drift_state)"
                "   as drift_oldest_pending_at,"
                " d.completed_at as drift_full_pass_at, d.completed_found as drift_full_pass_found,"
                " d.completed_scanned as drift_full_pass_scanned,"
                " (select count(*) from profileguard.events e where e.kind = 'failure'"
                "   and e.source = 'sync' and e.created_at > now() - interval '1 hour')"
                "   as sync_failures_hour"
                " from profileguard.drift_pass d"
            ).fetchone()
    except psycopg.Error as exc:
        raise translate(exc, context="reading profileguard.drift_state") from exc
    return _jsonable(found) if found else {}


def refresh(conn: psycopg.Connection) -> bool:
    """Run the full sweep (a scan of the identity table); False if another one is running."""
    try:
        row = conn.execute("select profileguard.refresh_stats()").fetchone()
    except psycopg.Error as exc:
        raise translate(exc, context="profileguard.refresh_stats()") from exc
    return bool(row and row[0])


def _rows(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            return [_jsonable(r) for r in cur.execute(query, params).fetchall()]
    except psycopg.Error as exc:
        raise translate(exc) from exc


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def events(
    conn: psycopg.Connection,
    *,
    limit: int = 50,
    before: int | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """One page of the audit trail, newest first; `next_before` fetches the following page."""
    limit = max(1, min(limit, 500))
    items = _rows(
        conn,
        "select id, created_at, kind, source, user_id, sqlstate, category, message, detail"
        " from profileguard.events"
        " where (%(before)s::bigint is null or id < %(before)s)"
        " and (%(kind)s::text is null or kind = %(kind)s)"
        " order by id desc limit %(limit)s",
        {"before": before, "kind": kind, "limit": limit + 1},
    )
    more = len(items) > limit
    items = items[:limit]
    return {
        "items": items,
        "next_before": items[-1]["id"] if more and items else None,
        "limit": limit,
    }


def quarantine(conn: psycopg.Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    """Quarantined users, most recent first, with their last error."""
    return _rows(
        conn,
        "select user_id, attempts, quarantined_at, last_sqlstate,"
        " profileguard.sqlstate_category(last_sqlstate) as category, last_message"
        " from profileguard.repair_state where quarantined_at is not null"
        " order by quarantined_at desc limit %(limit)s",
        {"limit": max(1, min(limit, 1000))},
    )


def history(conn: psycopg.Connection, *, hours: float = 24.0, points: int = 240
            ) -> list[dict[str, Any]]:
    """Samples of users, missing profiles, failures and repairs over time (oldest first),
    thinned to at most `points` rows."""
    return _rows(
        conn,
        "select taken_at, users, missing, quarantined, failures, repairs from ("
        " select distinct on (bucket) * from ("
        "  select s.*, ntile(%(points)s) over (order by s.taken_at) as bucket"
        "  from profileguard.stats_samples s"
        "  where s.taken_at >= now() - make_interval(secs => %(secs)s)) x"
        " order by bucket, taken_at desc) y"
        " order by taken_at",
        {"secs": hours * 3600, "points": max(2, min(points, 2000))},
    )


def alert_states(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The persisted state of every alert rule evaluated so far."""
    return _rows(
        conn,
        "select rule, state, severity, value, threshold, message, fired_at, resolved_at,"
        " evaluated_at, fire_count, pending_delivery, delivery_attempts, last_delivery_error,"
        " delivered_at from profileguard.alert_state order by rule",
        {},
    )


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class Condition:
    """What a rule sees in the figures: whether it holds, the value and the threshold."""

    active: bool
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True)
class Rule:
    """One alert rule: a name, how bad it is, and the check on the figures."""

    name: str
    severity: Severity
    summary: str
    check: Callable[[dict[str, Any], AlertSettings], Condition]


def _missing(stats: dict[str, Any], cfg: AlertSettings) -> Condition:
    missing = int(stats.get("missing") or 0)
    age = float(stats.get("oldest_missing_age_seconds") or 0)
    active = missing > cfg.missing_threshold and age >= cfg.missing_for_seconds
    message = (
        f"{missing} users have no profile (threshold {cfg.missing_threshold}); the oldest has "
        f"been missing for {age:.0f}s (threshold {cfg.missing_for_seconds:.0f}s); "
        "repair them: profileguard worker"
        if missing
        else "every user has a profile"
    )
    return Condition(active, missing, cfg.missing_threshold, message)


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
        f"from {cfg.success_rate_min_signups} signups)"
    )
    return Condition(active, None if rate is None else float(rate), cfg.success_rate_min_pct,
                     message)


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
        message = "no reconciler worker registered (alerts.worker_required is off)"
    else:
        message = (
            f"{live} of {registered} registered reconciler workers are live (heartbeat within "
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
    Rule("missing_profiles", "critical", "users without a profile for too long", _missing),
    Rule("success_rate", "critical", "trigger success rate below the minimum", _success),
    Rule("quarantine", "warning", "users quarantined by the reconciler", _quarantine),
    Rule("no_live_worker", "warning", "no reconciler worker has a fresh heartbeat", _worker),
    Rule("backfill_stalled", "warning", "a running backfill stopped progressing", _backfill),
    Rule("drift", "warning", "profiles out of step with their users", _drift),
)


@dataclass(frozen=True)
class Check:
    """One line of the verdict."""

    name: str
    status: Literal["ok", "warning", "critical"]
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message}


def evaluate_health(stats: dict[str, Any], cfg: AlertSettings) -> tuple[HealthStatus, list[Check]]:
    """The verdict: unhealthy when the trigger is off or a critical rule holds, degraded when a
    warning rule holds or any profile is missing, healthy otherwise."""
    checks: list[Check] = []
    if not stats.get("enabled"):
        checks.append(Check("enabled", "critical",
                            "profileguard is disabled; run: profileguard enable"))
    else:
        checks.append(Check("enabled", "ok", "the trigger is enabled"))
    if not stats.get("trigger_installed"):
        checks.append(Check("trigger", "critical",
                            f"the signup trigger on {stats.get('identity_table')} is missing or "
                            "disabled; run: profileguard install"))
    else:
        checks.append(Check("trigger", "ok", f"trigger present on {stats.get('identity_table')}"))
    for rule in RULES:
        cond = rule.check(stats, cfg)
        checks.append(Check(rule.name, rule.severity if cond.active else "ok", cond.message))
    missing = int(stats.get("missing") or 0)
    if missing > 0 and not any(c.name == "missing_profiles" and c.status != "ok" for c in checks):
        checks.append(Check("missing_now", "warning",
                            f"{missing} users have no profile yet (below the alert threshold)"))
    if any(c.status == "critical" for c in checks):
        return "unhealthy", checks
    if any(c.status == "warning" for c in checks):
        return "degraded", checks
    return "healthy", checks


def status(
    settings: Settings,
    *,
    refresh_if_older_than: float | None = None,
    with_lists: bool = True,
    conn: psycopg.Connection | None = None,
) -> dict[str, Any]:
    """Figures, verdict, alert states (and the quarantine list): what `profileguard status` and
    `/api/status` show. Runs the full sweep first when the counts are older than
    `refresh_if_older_than` seconds (default: alerts.refresh_interval_seconds). Uses `conn`
    (autocommit) when given, else its own connection."""
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


def build_status(
    conn: psycopg.Connection, stats: dict[str, Any], cfg: AlertSettings, *, with_lists: bool
) -> dict[str, Any]:
    """The status document for figures already read."""
    verdict, checks = evaluate_health(stats, cfg)
    result: dict[str, Any] = {
        "status": verdict,
        "exit_code": int(EXIT_CODES[verdict]),
        "checks": [c.as_dict() for c in checks],
        "stats": stats,
        "alerts": alert_states(conn),
    }
    if with_lists:
        result["quarantine"] = quarantine(conn, limit=50)
    return result


# ---------------------------------------------------------------- sinks


@dataclass(frozen=True)
class Notice:
    """One alert message: a rule started firing or resolved."""

    rule: str
    status: Literal["firing", "resolved"]
    severity: str
    message: str
    value: float | None
    threshold: float | None
    at: str

    def text(self) -> str:
        mark = ":rotating_light:" if self.status == "firing" else ":white_check_mark:"
        word = "FIRING" if self.status == "firing" else "RESOLVED"
        return f"{mark} profileguard {word} [{self.severity}] {self.rule}: {self.message}"

    def payload(self) -> dict[str, Any]:
        """Slack-compatible JSON (`text` plus an attachment), with the raw fields beside it."""
        color = {"firing": "#d93025" if self.severity == "critical" else "#f29900",
                 "resolved": "#188038"}[self.status]
        return {
            "text": self.text(),
            "attachments": [
                {
                    "color": color,
                    "fields": [
                        {"title": "rule", "value": self.rule, "short": True},
                        {"title": "status", "value": self.status, "short": True},
                        {"title": "value", "value": str(self.value), "short": True},
                        {"title": "threshold", "value": str(self.threshold), "short": True},
                    ],
                }
            ],
            "profileguard": {
                "rule": self.rule,
                "status": self.status,
                "severity": self.severity,
                "message": self.message,
                "value": self.value,
                "threshold": self.threshold,
                "at": self.at,
            },
        }


class Sink(Protocol):
    """Somewhere alerts go; `send` raises when the message was not delivered."""

    name: str

    def send(self, notice: Notice) -> None: ...


class LogSink:
    """Writes alerts to the `profileguard.alerts` logger (warning when firing, info when
    resolved)."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger("profileguard.alerts")

    def send(self, notice: Notice) -> None:
        level = logging.WARNING if notice.status == "firing" else logging.INFO
        self.logger.log(level, "%s", notice.text())


class DeliveryError(ProfileGuardError):
    """A webhook did not accept an alert."""


class WebhookSink:
    """POSTs the Slack-compatible JSON payload; any non-2xx answer or network error raises."""

    name = "webhook"

    def __init__(self, url: str, *, timeout: float = 5.0):
        self.url = url
        self.timeout = timeout

    def send(self, notice: Notice) -> None:
        body = json.dumps(notice.payload()).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                code = response.status
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook answered HTTP {exc.code}",
                                hint="check alerts.webhook_url") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"webhook unreachable: {exc}",
                                hint="check alerts.webhook_url and the network") from exc
        if not 200 <= code < 300:
            raise DeliveryError(f"webhook answered HTTP {code}", hint="check alerts.webhook_url")


def default_sinks(cfg: AlertSettings) -> list[Sink]:
    """The log, plus the webhook when alerts.webhook_url is set."""
    sinks: list[Sink] = [LogSink()]
    if cfg.webhook_url:
        sinks.append(WebhookSink(cfg.webhook_url, timeout=cfg.webhook_timeout_seconds))
    return sinks


# ---------------------------------------------------------------- alert evaluation


@dataclass
class Evaluation:
    """What one evaluation did."""

    status: HealthStatus = "healthy"
    active: list[str] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    delivery_errors: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


class AlertManager:
    """Evaluates the rules and moves their persisted state; each transition is one conditional
    UPDATE, so with several evaluators exactly one records (and delivers) it."""

    def __init__(
        self,
        settings: Settings,
        *,
        sinks: Sequence[Sink] | None = None,
        rules: Iterable[Rule] = RULES,
        retry_base_seconds: float = 0.2,
    ):
        self.settings = settings
        self.cfg = settings.alerts
        self.sinks = list(default_sinks(self.cfg) if sinks is None else sinks)
        self.rules = tuple(rules)
        self.retry_base_seconds = retry_base_seconds

    def evaluate(self, conn: psycopg.Connection | None = None,
                 stats: dict[str, Any] | None = None) -> Evaluation:
        """Read the figures (unless given), record transitions, deliver pending messages.
        Database errors raise (translated); delivery errors never do."""
        own = conn is None
        conn = conn or open_connection(self.settings)
        try:
            stats = read_stats(conn, self.cfg) if stats is None else stats
            result = Evaluation(stats=stats)
            result.status, _ = evaluate_health(stats, self.cfg)
            for rule in self.rules:
                cond = rule.check(stats, self.cfg)
                if cond.active:
                    result.active.append(rule.name)
                if self._transition(conn, rule, cond):
                    (result.fired if cond.active else result.resolved).append(rule.name)
            self.deliver(conn, result)
            return result
        except psycopg.Error as exc:
            raise translate(exc, context="evaluating alerts") from exc
        finally:
            if own:
                conn.close()

    def _transition(self, conn: psycopg.Connection, rule: Rule, cond: Condition) -> bool:
        params = {
            "rule": rule.name,
            "severity": rule.severity,
            "value": cond.value,
            "threshold": cond.threshold,
            "message": cond.message,
        }
        with conn.transaction():
            conn.execute(
                "insert into profileguard.alert_state (rule, severity) values (%(rule)s,"
                " %(severity)s) on conflict (rule) do nothing",
                params,
            )
            if cond.active:
                row = conn.execute(
                    "update profileguard.alert_state set state = 'firing', fired_at = now(),"
                    " resolved_at = null, fire_count = fire_count + 1,"
                    " pending_delivery = 'firing', delivery_attempts = 0,"
                    " last_delivery_error = null, severity = %(severity)s, value = %(value)s,"
                    " threshold = %(threshold)s, message = %(message)s, evaluated_at = now()"
                    " where rule = %(rule)s and state = 'ok' returning rule",
                    params,
                ).fetchone()
            else:
                # A firing message not delivered yet has nothing left to say once resolved.
                row = conn.execute(
                    "update profileguard.alert_state set state = 'ok', resolved_at = now(),"
                    " pending_delivery = case when pending_delivery = 'firing' then null"
                    "  else 'resolved' end,"
                    " delivery_attempts = 0, last_delivery_error = null, value = %(value)s,"
                    " threshold = %(threshold)s, message = %(message)s, evaluated_at = now()"
                    " where rule = %(rule)s and state = 'firing' returning rule",
                    params,
                ).fetchone()
            if row is None:
                conn.execute(
                    "update profileguard.alert_state set evaluated_at = now(), value = %(value)s,"
                    " threshold = %(threshold)s where rule = %(rule)s",
                    params,
                )
                return False
        log.info("alert %s %s: %s", rule.name, "fired" if cond.active else "resolved",
                 cond.message)
        return True

    def deliver(self, conn: psycopg.Connection, result: Evaluation | None = None) -> None:
        """Send every pending message once. Rows are locked (SKIP LOCKED) while sending, so two
        processes never send the same one; a failed round is retried at the next evaluation."""
        with conn.transaction():
            with conn.cursor(row_factory=dict_row) as cur:
                pending = cur.execute(
                    "select rule, pending_delivery, severity, message, value, threshold,"
                    " coalesce(case when pending_delivery = 'firing' then fired_at"
                    "  else resolved_at end, now()) as at, delivery_attempts"
                    " from profileguard.alert_state where pending_delivery is not null"
                    " order by rule for update skip locked"
                ).fetchall()
            for row in pending:
                notice = Notice(
                    rule=row["rule"],
                    status=row["pending_delivery"],
                    severity=row["severity"],
                    message=row["message"] or "",
                    value=row["value"],
                    threshold=row["threshold"],
                    at=row["at"].isoformat(),
                )
                error = self._send_all(notice)
                if error is None:
                    conn.execute(
                        "update profileguard.alert_state set pending_delivery = null,"
                        " delivered_at = now(), last_delivery_error = null where rule = %s",
                        (notice.rule,),
                    )
                    if result is not None:
                        result.delivered.append(f"{notice.rule}:{notice.status}")
                    continue
                attempts = int(row["delivery_attempts"]) + 1
                give_up = attempts >= MAX_DELIVERY_ROUNDS
                conn.execute(
                    "update profileguard.alert_state set delivery_attempts = %s,"
                    " last_delivery_error = %s,"
                    " pending_delivery = case when %s then null else pending_delivery end"
                    " where rule = %s",
                    (attempts, error[:2000], give_up, notice.rule),
                )
                if result is not None:
                    result.delivery_errors.append(f"{notice.rule}:{notice.status}: {error}")
                (log.error if give_up else log.warning)(
                    "alert %s (%s) not delivered (round %d%s): %s", notice.rule, notice.status,
                    attempts, ", giving up" if give_up else "", error,
                )

    def _send_all(self, notice: Notice) -> str | None:
        """Send to every sink, retrying each with backoff; the first lasting error, or None."""
        errors = []
        for sink in self.sinks:
            attempts = self.cfg.webhook_attempts if isinstance(sink, WebhookSink) else 1
            for attempt in range(attempts):
                try:
                    sink.send(notice)
                    break
                except Exception as exc:  # a sink must never break evaluation
                    if attempt + 1 >= attempts:
                        errors.append(f"{sink.name}: {exc}")
                    else:
                        time.sleep(self.retry_base_seconds * 2**attempt)
        return "; ".join(errors) or None


# ---------------------------------------------------------------- the background loop


class MonitorLoop:
    """Runs the full sweep every refresh interval and evaluates alerts every evaluation interval,
    in a daemon thread; database errors are logged and retried, never raised.
    The reconciler worker can run one beside itself (`MonitorLoop(settings).start()`)."""

    def __init__(self, settings: Settings, *, manager: AlertManager | None = None):
        self.settings = settings
        self.manager = manager or AlertManager(settings)
        self.stop_event = threading.Event()
        self.last_error: str | None = None
        self.last_evaluation: Evaluation | None = None
        self.evaluations = 0
        self._thread: threading.Thread | None = None

    def start(self) -> MonitorLoop:
        self._thread = threading.Thread(target=self.run, name="profileguard-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        cfg = self.settings.alerts
        next_refresh = 0.0
        conn: psycopg.Connection | None = None
        while not self.stop_event.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = open_connection(self.settings)
                    require_monitoring(conn)
                if time.monotonic() >= next_refresh:
                    refresh(conn)
                    next_refresh = time.monotonic() + cfg.refresh_interval_seconds
                self.last_evaluation = self.manager.evaluate(conn)
                self.evaluations += 1
                self.last_error = None
            except (ProfileGuardError, psycopg.Error) as exc:
                self.last_error = str(exc)
                log.warning("monitor loop: %s", exc)
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
            self.stop_event.wait(cfg.evaluate_interval_seconds)
        if conn is not None:
            conn.close()


def evaluate_once(settings: Settings, *, sinks: Sequence[Sink] | None = None) -> Evaluation:
    """One evaluation of every alert rule (for cron or a worker hook)."""
    return AlertManager(settings, sinks=sinks).evaluate()


__all__ = [
    "EXIT_CODES",
    "RULES",
    "AlertManager",
    "Check",
    "Condition",
    "Evaluation",
    "LogSink",
    "MonitorLoop",
    "Notice",
    "Rule",
    "WebhookSink",
    "evaluate_health",
    "evaluate_once",
    "events",
    "history",
    "quarantine",
    "read_stats",
    "refresh",
    "status",
]

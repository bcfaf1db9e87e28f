"""Alerts: every check of the verdict (profileguard.health()) is an alert rule, whose persisted
state fires once and resolves once however many processes evaluate, delivered to the sinks with
retries; and the background loop of `profileguard serve` (full sweeps, evaluations)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from profileguard.config import Settings
from profileguard.db import translate
from profileguard.errors import ProfileGuardError
from profileguard.observe.health import Check, HealthStatus, read_health
from profileguard.observe.sinks import Notice, Sink, WebhookSink, default_sinks
from profileguard.observe.stats import open_connection, refresh, require_monitoring

log = logging.getLogger(__name__)

# After this many failed delivery rounds a message is dropped (and logged as an error).
MAX_DELIVERY_ROUNDS = 10


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
    """Reads the verdict and moves the persisted state of its checks; each transition is one
    conditional UPDATE, so with several evaluators exactly one records (and delivers) it."""

    def __init__(
        self,
        settings: Settings,
        *,
        sinks: Sequence[Sink] | None = None,
        retry_base_seconds: float = 0.2,
    ):
        self.settings = settings
        self.cfg = settings.alerts
        self.sinks = list(default_sinks(self.cfg) if sinks is None else sinks)
        self.retry_base_seconds = retry_base_seconds

    def evaluate(self, conn: psycopg.Connection | None = None) -> Evaluation:
        """Read the verdict, record transitions, deliver pending messages.
        Database errors raise (translated); delivery errors never do."""
        own = conn is None
        conn = conn or open_connection(self.settings)
        try:
            health = read_health(conn, self.cfg)
            result = Evaluation(status=health.status, active=health.active, stats=health.stats)
            for check in health.checks:
                if self._transition(conn, check):
                    (result.fired if check.active else result.resolved).append(check.name)
            self.deliver(conn, result)
            return result
        except psycopg.Error as exc:
            raise translate(exc, context="evaluating alerts") from exc
        finally:
            if own:
                conn.close()

    def _transition(self, conn: psycopg.Connection, check: Check) -> bool:
        """Record a fire or resolve of `check`; True when this call made the transition."""
        params = {
            "rule": check.name,
            "severity": check.severity,
            "value": check.value,
            "threshold": check.threshold,
            "message": check.message,
        }
        with conn.transaction():
            conn.execute(
                "insert into profileguard.alert_state (rule, severity) values (%(rule)s,"
                " %(severity)s) on conflict (rule) do nothing",
                params,
            )
            if check.active:
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
        log.info(
            "alert %s %s: %s", check.name, "fired" if check.active else "resolved", check.message
        )
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
                    "alert %s (%s) not delivered (round %d%s): %s",
                    notice.rule,
                    notice.status,
                    attempts,
                    ", giving up" if give_up else "",
                    error,
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
    The worker can run one beside itself (`MonitorLoop(settings).start()`)."""

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

"""Prometheus exposition: one collector that reads `profileguard.health()` (the verdict and the
figures it was judged from) on every scrape.

The read is cheap at any table size (see migration 0004), so scraping every 15 s is fine. When
the database cannot be read, only `profileguard_up 0` is exported (and the scrape still succeeds),
so that an alert on `profileguard_up == 0` fires instead of the target going absent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from profileguard import observe
from profileguard.config import Settings
from profileguard.errors import ProfileGuardError

log = logging.getLogger(__name__)

# Every metric name exported (as it appears in the text format); the alert rules and the Grafana
# dashboard use only these.
METRICS = (
    "profileguard_up",
    "profileguard_health_status",
    "profileguard_check_failing",
    "profileguard_invariant_check_age_seconds",
    "profileguard_enabled",
    "profileguard_trigger_installed",
    "profileguard_users",
    "profileguard_profiles",
    "profileguard_missing_profiles",
    "profileguard_oldest_missing_profile_age_seconds",
    "profileguard_repair_lag_seconds",
    "profileguard_coverage_ratio",
    "profileguard_trigger_success_ratio",
    "profileguard_window_signups",
    "profileguard_window_trigger_failures",
    "profileguard_identity_inserts_total",
    "profileguard_failures_total",
    "profileguard_repairs_total",
    "profileguard_quarantined_users",
    "profileguard_retrying_users",
    "profileguard_live_workers",
    "profileguard_registered_workers",
    "profileguard_worker_heartbeat_age_seconds",
    "profileguard_backfill_running",
    "profileguard_backfill_stalled",
    "profileguard_backfill_progress_ratio",
    "profileguard_backfill_update_age_seconds",
    "profileguard_stats_count_age_seconds",
    "profileguard_stats_refresh_duration_seconds",
    "profileguard_drift_pending_profiles",
    "profileguard_drift_full_pass_found",
    "profileguard_sync_failures_hour",
    "profileguard_alert_firing",
    "profileguard_scrape_duration_seconds",
)


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily | None:
    return None if value is None else GaugeMetricFamily(name, doc, value=float(value))


ConnectionFactory = Callable[[], AbstractContextManager[psycopg.Connection]]


class StatsCollector(Collector):
    """Collects the verdict and figures of `profileguard.health()` at scrape time, on a
    connection from `connection` (a pool's, in `profileguard serve`) or a new one per scrape."""

    def __init__(self, settings: Settings, connection: ConnectionFactory | None = None):
        self.settings = settings
        self.connection = connection or (lambda: observe.open_connection(settings))

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            with self.connection() as conn:
                health = observe.read_health(conn, self.settings.alerts)
                alerts = observe.alert_states(conn)
        except ProfileGuardError as exc:
            log.warning("metrics: cannot read profileguard stats: %s", exc)
            yield GaugeMetricFamily("profileguard_up", "1 when the database was read", value=0)
            return
        yield GaugeMetricFamily("profileguard_up", "1 when the database was read", value=1)
        yield from self._verdict(health)
        yield from self._figures(health, alerts)
        yield GaugeMetricFamily(
            "profileguard_scrape_duration_seconds",
            "Time taken to read the figures",
            value=time.perf_counter() - started,
        )

    def _verdict(self, health: observe.Health) -> Iterator[Metric]:
        """The verdict and its checks: the same evaluation `profileguard status` shows."""
        yield GaugeMetricFamily(
            "profileguard_health_status",
            "The verdict: 0 healthy, 1 degraded, 2 unhealthy",
            value=observe.LEVEL[health.status],
        )
        failing = GaugeMetricFamily(
            "profileguard_check_failing",
            "1 while a check of the verdict holds (its alert fires)",
            labels=["check", "severity"],
        )
        for check in health.checks:
            failing.add_metric([check.name, check.severity], 1 if check.active else 0)
        yield failing
        age = health.stats.get("invariant_check_age_seconds")
        if age is not None:
            yield GaugeMetricFamily(
                "profileguard_invariant_check_age_seconds",
                "Seconds since the bounded check last looked for users without a profile",
                value=float(age),
            )

    def _figures(self, health: observe.Health, alerts: list[dict[str, Any]]) -> Iterator[Metric]:
        yield from self._gauges(health.stats)
        yield from self._families(health, alerts)

    def _gauges(self, s: dict[str, Any]) -> Iterator[Metric]:
        """The single-value figures (absent when stats() has none)."""

        def num(key: str) -> float | None:
            value = s.get(key)
            return None if value is None else float(value)

        rate = num("success_rate_pct")
        candidates = [
            _gauge(
                "profileguard_enabled",
                "1 when the trigger is enabled",
                1 if s.get("enabled") else 0,
            ),
            _gauge(
                "profileguard_trigger_installed",
                "1 when the signup trigger exists and is enabled on the identity table",
                1 if s.get("trigger_installed") else 0,
            ),
            _gauge("profileguard_users", "Users in the identity table", num("users")),
            _gauge("profileguard_profiles", "Users that have a profile", num("profiles")),
            _gauge("profileguard_missing_profiles", "Users without a profile", num("missing")),
            _gauge(
                "profileguard_oldest_missing_profile_age_seconds",
                "How long the longest-missing profile has been missing",
                num("oldest_missing_age_seconds"),
            ),
            _gauge(
                "profileguard_repair_lag_seconds",
                "Age of the oldest missing profile that is not quarantined (repair lag)",
                num("repair_lag_seconds"),
            ),
            _gauge(
                "profileguard_coverage_ratio",
                "Share of users that have a profile (0-1)",
                None if s.get("coverage_pct") is None else float(s["coverage_pct"]) / 100,
            ),
            _gauge(
                "profileguard_trigger_success_ratio",
                "Share of signups in the window whose profile the trigger created (0-1)",
                None if rate is None else rate / 100,
            ),
            _gauge(
                "profileguard_window_signups",
                "Signups in the success-rate window",
                num("signups_window"),
            ),
            _gauge(
                "profileguard_window_trigger_failures",
                "Users whose profile the trigger failed to create in the window",
                num("trigger_failures_window"),
            ),
            _gauge(
                "profileguard_drift_pending_profiles",
                "Profiles out of step with their user that the worker could not fix yet",
                num("drift_pending") or 0,
            ),
            _gauge(
                "profileguard_drift_full_pass_found",
                "Profiles out of step found by the last complete full drift pass "
                "(0 before the first)",
                num("drift_full_pass_found") or 0,
            ),
            _gauge(
                "profileguard_sync_failures_hour",
                "Updates whose profile sync failed in the last hour (recorded, repaired)",
                num("sync_failures_hour") or 0,
            ),
            _gauge(
                "profileguard_quarantined_users",
                "Users the worker gave up on",
                num("quarantined"),
            ),
            _gauge(
                "profileguard_retrying_users", "Users waiting for a repair retry", num("retrying")
            ),
            _gauge(
                "profileguard_live_workers",
                "Workers with a fresh heartbeat",
                num("live_workers"),
            ),
            _gauge(
                "profileguard_registered_workers",
                "Workers registered",
                len(s.get("workers") or []),
            ),
            _gauge(
                "profileguard_stats_count_age_seconds",
                "Age of the last full count",
                num("count_age_seconds"),
            ),
            _gauge(
                "profileguard_stats_refresh_duration_seconds",
                "Duration of the last full count",
                None if s.get("refresh_ms") is None else float(s["refresh_ms"]) / 1000,
            ),
        ]
        yield from (m for m in candidates if m is not None)

    def _families(self, health: observe.Health, alerts: list[dict[str, Any]]) -> Iterator[Metric]:
        """Counters, labelled families, backfill progress and the persisted alert states."""
        s = health.stats
        inserts = CounterMetricFamily(
            "profileguard_identity_inserts",
            "Rows inserted into the identity table (statistics collector)",
        )
        inserts.add_metric([], float(s.get("identity_inserts_total") or 0))
        yield inserts
        failures = CounterMetricFamily(
            "profileguard_failures",
            "Profile creation failures recorded, by category",
            labels=["category"],
        )
        for category in (
            "constraint",
            "permission",
            "missing_object",
            "data",
            "transient",
            "other",
        ):
            total = (s.get("failures_by_category_total") or {}).get(category, 0)
            failures.add_metric([category], float(total))
        yield failures
        repairs = CounterMetricFamily("profileguard_repairs", "Profiles created by repair")
        repairs.add_metric([], float(s.get("repairs_total") or 0))
        yield repairs

        heartbeat = GaugeMetricFamily(
            "profileguard_worker_heartbeat_age_seconds",
            "Seconds since each worker's heartbeat",
            labels=["worker_id"],
        )
        for worker in s.get("workers") or []:
            heartbeat.add_metric([str(worker["worker_id"])], float(worker["heartbeat_age_seconds"]))
        yield heartbeat

        run = s.get("backfill") or {}
        yield GaugeMetricFamily(
            "profileguard_backfill_running",
            "1 while a backfill runs",
            value=1 if run.get("state") == "running" else 0,
        )
        yield GaugeMetricFamily(
            "profileguard_backfill_stalled",
            "1 when a running backfill stopped progressing",
            value=1 if run.get("stalled") else 0,
        )
        if run.get("progress_pct") is not None:
            yield GaugeMetricFamily(
                "profileguard_backfill_progress_ratio",
                "Progress of the latest backfill (0-1)",
                value=float(run["progress_pct"]) / 100,
            )
        if run.get("update_age_seconds") is not None:
            yield GaugeMetricFamily(
                "profileguard_backfill_update_age_seconds",
                "Seconds since the latest backfill reported progress",
                value=float(run["update_age_seconds"]),
            )

        firing = GaugeMetricFamily(
            "profileguard_alert_firing",
            "1 while an alert rule fires (profileguard serve)",
            labels=["rule", "severity"],
        )
        known = {a["rule"]: a for a in alerts}
        for check in health.checks:
            state = known.get(check.name, {})
            firing.add_metric(
                [check.name, check.severity], 1 if state.get("state") == "firing" else 0
            )
        yield firing


def render(settings: Settings, connection: ConnectionFactory | None = None) -> bytes:
    """The Prometheus text exposition of every profileguard metric."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(settings, connection))
    return generate_latest(registry)

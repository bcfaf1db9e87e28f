"""Observability: figures, the health verdict from the invariant, alert rules and sinks.

`stats` reads `profileguard.stats()` and the lists beside it; `health` evaluates the one verdict
every view shows; `alerts` persists and delivers its transitions (and runs serve's loop); `sinks`
are where alerts go.
"""

from __future__ import annotations

from profileguard.observe.alerts import AlertManager, Evaluation, MonitorLoop, evaluate_once
from profileguard.observe.health import (
    EXIT_CODES,
    RULES,
    Check,
    Condition,
    Health,
    Rule,
    build_status,
    evaluate,
    evaluate_health,
    status,
)
from profileguard.observe.sinks import DeliveryError, LogSink, Notice, Sink, WebhookSink
from profileguard.observe.stats import (
    alert_states,
    events,
    history,
    open_connection,
    quarantine,
    read_stats,
    refresh,
    require_monitoring,
)

__all__ = [
    "EXIT_CODES",
    "RULES",
    "AlertManager",
    "Check",
    "Condition",
    "DeliveryError",
    "Evaluation",
    "Health",
    "LogSink",
    "MonitorLoop",
    "Notice",
    "Rule",
    "Sink",
    "WebhookSink",
    "alert_states",
    "build_status",
    "evaluate",
    "evaluate_health",
    "evaluate_once",
    "events",
    "history",
    "open_connection",
    "quarantine",
    "read_stats",
    "refresh",
    "require_monitoring",
    "status",
]

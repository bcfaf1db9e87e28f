"""Observability: figures, the health verdict from the invariant, alert rules and sinks.

`stats` reads `profileguard.stats()` and the lists beside it; `health` reads the one verdict every
view shows (`profileguard.health()`); `alerts` persists and delivers the transitions of its checks
(and runs serve's loop); `sinks` are where alerts go.
"""

from __future__ import annotations

from profileguard.observe.alerts import AlertManager, Evaluation, MonitorLoop, evaluate_once
from profileguard.observe.health import (
    EXIT_CODES,
    LEVEL,
    Check,
    Health,
    build_status,
    read_health,
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
    "LEVEL",
    "AlertManager",
    "Check",
    "DeliveryError",
    "Evaluation",
    "Health",
    "LogSink",
    "MonitorLoop",
    "Notice",
    "Sink",
    "WebhookSink",
    "alert_states",
    "build_status",
    "evaluate_once",
    "events",
    "history",
    "open_connection",
    "quarantine",
    "read_health",
    "read_stats",
    "refresh",
    "require_monitoring",
    "status",
]

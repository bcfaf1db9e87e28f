"""Where alerts go: the log, and a webhook taking Slack-compatible JSON."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from profileguard.config import AlertSettings
from profileguard.errors import ProfileGuardError

USER_AGENT = "profileguard-alerts"


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
        color = {
            "firing": "#d93025" if self.severity == "critical" else "#f29900",
            "resolved": "#188038",
        }[self.status]
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
            raise DeliveryError(
                f"webhook answered HTTP {exc.code}", hint="check alerts.webhook_url"
            ) from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DeliveryError(
                f"webhook unreachable: {exc}", hint="check alerts.webhook_url and the network"
            ) from exc
        if not 200 <= code < 300:
            raise DeliveryError(f"webhook answered HTTP {code}", hint="check alerts.webhook_url")


def default_sinks(cfg: AlertSettings) -> list[Sink]:
    """The log, plus the webhook when alerts.webhook_url is set."""
    sinks: list[Sink] = [LogSink()]
    if cfg.webhook_url:
        sinks.append(WebhookSink(cfg.webhook_url, timeout=cfg.webhook_timeout_seconds))
    return sinks

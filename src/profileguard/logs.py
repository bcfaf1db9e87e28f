"""Logging of long-running processes (the worker): a level, and text or JSON lines.

`configure(level, format)` sets up the `profileguard` logger on stderr. The JSON format writes
one object per line with time, level, logger and message, plus every field passed with
`extra=` (e.g. `log.info("batch repaired", extra={"repaired": 40})`), for log collectors.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has: whatever else a record carries came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the `extra=` fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "info", format: str = "text", stream: TextIO | None = None) -> None:
    """Send the `profileguard` loggers' records at `level` or above to stderr as text or JSON."""
    if level not in LEVELS or format not in FORMATS:
        raise ValueError(f"log level {level!r} / format {format!r}: use {LEVELS} / {FORMATS}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger("profileguard")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False

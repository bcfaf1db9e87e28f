"""Failure messages without the data in them: what the HTTP API shows unless asked for more.

PostgreSQL error texts can carry row values ("Failing row contains (…, Grace Hopper, …)",
"Key (username)=(grace)", 'invalid input syntax for type uuid: "…"'). Stored messages are
already stripped of those on write (profileguard.redact_error() in the database); the API goes
further and shows only the SQLSTATE, its category and the names of the constraint, column and
table involved.
"""

from __future__ import annotations

import re
from typing import Any

# Kinds of event whose message and detail come from a failed statement.
FAILURE_KINDS = frozenset({"failure", "quarantine"})
_CONSTRAINT = re.compile(r'constraint "([^"]+)"')
_COLUMN = re.compile(r'column "([^"]+)"')
_RELATION = re.compile(r'relation "([^"]+)"')
_KEY = re.compile(r"Key \((.+?)\)=")


def summarize(message: str | None, detail: str | None = None) -> dict[str, str]:
    """The names (never values) an error text mentions: constraint, column(s), table."""
    text = " ".join(t for t in (message, detail) if t)
    names: dict[str, str] = {}
    for key, pattern in (("constraint", _CONSTRAINT), ("column", _COLUMN), ("table", _RELATION)):
        found = pattern.search(text)
        if found:
            names[key] = found.group(1)
    key_columns = _KEY.search(text)
    if key_columns and "column" not in names:
        names["column"] = key_columns.group(1)
    return names


def _line(sqlstate: str | None, category: str | None, names: dict[str, str]) -> str:
    parts = [p for p in (category, sqlstate) if p]
    parts.extend(f'{k} "{v}"' for k, v in names.items())
    return " ".join(parts) + " (details redacted)"


def redact_row(row: dict[str, Any]) -> dict[str, Any]:
    """An event or quarantine row with its failure text replaced by the names it mentions."""
    if "kind" in row and row["kind"] not in FAILURE_KINDS:
        return row
    out = dict(row)
    message_key = "last_message" if "last_message" in row else "message"
    sqlstate = row.get("last_sqlstate", row.get("sqlstate"))
    detail = row.get("detail")
    detail_text = detail.get("detail") if isinstance(detail, dict) else None
    names = summarize(row.get(message_key), detail_text if isinstance(detail_text, str) else None)
    if row.get(message_key) is not None:
        out[message_key] = _line(sqlstate, row.get("category"), names)
    if isinstance(detail, dict):
        out["detail"] = {k: v for k, v in detail.items() if k not in ("detail", "message")}
    out["redacted"] = True
    out.update({f"{k}_name": v for k, v in names.items()})
    return out

"""Failure rows as the HTTP API shows them unless asked for more: the SQLSTATE, its category and
the names of what failed, never the text.

Nothing is stripped here. The database stores a failure's message and detail without values
(every quoted or parenthesised value removed as it is written: profileguard.strip_values) and the
error's fields (schema, table, column, constraint and data type names, as PostgreSQL reports them)
in the event's detail; this module only chooses what of a stored row to show.
"""

from __future__ import annotations

from typing import Any

# Kinds of event whose message and detail come from a failed statement.
FAILURE_KINDS = frozenset({"failure", "quarantine"})
# The error fields a failure event keeps in its detail (GET STACKED DIAGNOSTICS' and psycopg's
# Diagnostic's names), in the order a summary names them.
FIELDS = ("constraint_name", "column_name", "table_name", "schema_name", "datatype_name")
# Free text in a failure event's detail, shown only on request.
TEXT_KEYS = frozenset({"detail", "message"})


def fields(detail: Any) -> dict[str, str]:
    """The error fields a stored detail carries."""
    if not isinstance(detail, dict):
        return {}
    return {k: detail[k] for k in FIELDS if isinstance(detail.get(k), str) and detail[k]}


def _line(sqlstate: str | None, category: str | None, names: dict[str, str]) -> str:
    parts = [p for p in (category, sqlstate) if p]
    parts.extend(f'{k.removesuffix("_name")} "{v}"' for k, v in names.items())
    return " ".join(parts) + " (details redacted)"


def redact_row(row: dict[str, Any]) -> dict[str, Any]:
    """An event or quarantine row with its failure text replaced by its SQLSTATE, category and
    error fields (also given as top-level `<field>` keys)."""
    if "kind" in row and row["kind"] not in FAILURE_KINDS:
        return row
    out = dict(row)
    message_key = "last_message" if "last_message" in row else "message"
    sqlstate = row.get("last_sqlstate", row.get("sqlstate"))
    detail = row.get("detail")
    names = fields(detail)
    if row.get(message_key) is not None:
        out[message_key] = _line(sqlstate, row.get("category"), names)
    if isinstance(detail, dict):
        out["detail"] = {k: v for k, v in detail.items() if k not in TEXT_KEYS}
    out["redacted"] = True
    out.update(names)
    return out

"""Generated statements formatted for people: PostgreSQL's own grammar (pglast's prettifier) lays
them out, one clause a line and lists on one line while they fit, before they go into a function
body, where they are indented to the placeholder they fill.
"""

from __future__ import annotations

from pglast import prettify
from psycopg import sql

# Lists are kept on one line while they end before this column (the body's own indentation
# comes on top).
LIST_MARGIN = 88


class Formatted(sql.SQL):
    """A statement already laid out on several lines: a template indents its continuation lines
    to the column of the placeholder it fills (see `indented`)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def indented(self, column: int) -> Formatted:
        return Formatted(self.text.replace("\n", "\n" + " " * column))


def pretty(statement: sql.Composable) -> Formatted:
    """`statement` as pglast prints it; the printed tree is checked to parse as the original."""
    text = statement.as_string(None)
    return Formatted(
        prettify(
            text,
            safety_belt=True,
            compact_lists_margin=LIST_MARGIN,
            comma_at_eoln=True,
            special_functions=True,
        )
    )


def fill(text: str, **parts: sql.Composable) -> sql.Composed:
    """`text` with its placeholders filled; a `Formatted` part is indented to its placeholder's
    column (each of its placeholders must start at the same column)."""
    filled: dict[str, sql.Composable] = {}
    for key, part in parts.items():
        if isinstance(part, Formatted):
            columns = set()
            start = text.find("{" + key + "}")
            while start >= 0:
                columns.add(start - (text.rfind("\n", 0, start) + 1))
                start = text.find("{" + key + "}", start + 1)
            if len(columns) > 1:
                raise ValueError(f"{{{key}}} is placed at several columns: {sorted(columns)}")
            part = part.indented(columns.pop() if columns else 0)
        filled[key] = part
    return sql.SQL(text).format(**filled)

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
    """`text` with its placeholders filled; a `Formatted` part is indented to the column of each
    placeholder it fills."""
    filled: dict[str, sql.Composable] = {}
    for key, part in parts.items():
        if not isinstance(part, Formatted):
            filled[key] = part
            continue
        pieces = text.split("{" + key + "}")
        for i in range(1, len(pieces)):
            column = len(pieces[i - 1]) - (pieces[i - 1].rfind("\n") + 1)
            name = f"{key}__at_{column}"
            filled[name] = part.indented(column)
            pieces[i - 1] += "{" + name + "}"
        text = "".join(pieces)
    return sql.SQL(text).format(**filled)

"""Generated statements formatted for people: PostgreSQL's own grammar (pglast's prettifier) lays
them out, one clause a line and lists on one line while they fit, before they go into a function
body, where they are indented to the placeholder they fill.
"""

from __future__ import annotations

import json

from pglast import parser, prettify
from psycopg import sql

# Lists are kept on one line while they end before this column (the body's own indentation
# comes on top).
LIST_MARGIN = 88
# The longest line of an installed function; a statement indented deep enough to pass it has its
# long lines broken between two tokens.
WIDTH = 120


class Formatted(sql.SQL):
    """A statement already laid out on several lines: a template indents its continuation lines
    to the column of the placeholder it fills (see `indented`)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def indented(self, column: int) -> Formatted:
        return Formatted(wrapped(self.text, WIDTH - column).replace("\n", "\n" + " " * column))


def wrapped(text: str, width: int) -> str:
    """`text` (one statement) with every line longer than `width` characters broken before the
    last token that fits, the rest indented four more, and a line of one token indented less:
    whitespace between two tokens (a literal or a quoted name is one) is all that changes."""
    if all(len(line) <= width for line in text.split("\n")):
        return text
    starts = {token.start for token in parser.scan(text)}  # byte offsets
    lines: list[str] = []
    base = 0  # the line's byte offset in `text`
    for line in text.split("\n"):
        breaks = [
            i
            for i in range(1, len(line))
            if line[i - 1] == " " and line[:i].strip() and base + len(line[:i].encode()) in starts
        ]
        base += len(line.encode()) + 1
        pad = " " * (len(line) - len(line.lstrip(" ")) + 4)
        prefix, start = "", 0
        while len(prefix) + len(line) - start > width:
            fits = [i for i in breaks if i > start and len(prefix) + i - start <= width]
            if not fits:
                break
            lines.append(prefix + line[start : fits[-1]].rstrip())
            prefix, start = pad, fits[-1]
        rest = prefix + line[start:]
        if len(rest) > width:  # nowhere to break: as far right as it fits
            rest = " " * max(0, width - len(rest.lstrip(" "))) + rest.lstrip(" ")
        lines.append(rest)
    result = "\n".join(lines)
    if parser.fingerprint(result) != parser.fingerprint(text):
        raise AssertionError("breaking the lines changed the statement")
    return result


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


def json_text(value: object, indent: int = 0) -> str:
    """`value` as JSON for a literal in the rendered file: one key a line, and a list of scalars
    packed on as few lines as fit in LIST_MARGIN (the reserved names take a few lines, not 41)."""
    pad = " " * indent
    inner = pad + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {json_text(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value:
        if any(isinstance(item, (dict, list)) for item in value):
            items = [inner + json_text(item, indent + 2) for item in value]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        words = [json.dumps(item) for item in value]
        if indent + len(", ".join(words)) + 2 <= LIST_MARGIN:
            return "[" + ", ".join(words) + "]"
        lines = [inner + words[0]]
        for word in words[1:]:
            if len(lines[-1]) + len(word) + 2 <= LIST_MARGIN:
                lines[-1] += ", " + word
            else:
                lines[-1] += ","
                lines.append(inner + word)
        return "[\n" + "\n".join(lines) + "\n" + pad + "]"
    return json.dumps(value)

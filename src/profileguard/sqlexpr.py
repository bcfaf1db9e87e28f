"""Expressions the server prints (index keys, CHECK constraints) with one column replaced.

A derived username is validated the way the table will judge it: the constraint's own
expression, as `pg_get_constraintdef` prints it, evaluated on the candidate. This module finds
the column's references in such text (not inside string literals, not function or type names)
and says which columns an expression uses.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""(?P<string>[Ee]?'(?:[^'\\]|''|\\.)*')"""
    r"""|(?P<quoted>"(?:[^"]|"")*")"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_$]*)"""
    r"""|(?P<other>::|.)""",
    re.DOTALL,
)
_CHECK = re.compile(r"^CHECK \((?P<body>.*)\)(?P<tail>(?: NO INHERIT| NOT VALID)*)$", re.DOTALL)


def _references(text: str) -> list[tuple[int, int, str]]:
    """(start, end, column name) of every column reference in `text`."""
    found: list[tuple[int, int, str]] = []
    tokens = list(_TOKEN.finditer(text))
    for i, token in enumerate(tokens):
        kind = token.lastgroup
        if kind not in ("word", "quoted"):
            continue
        before = next((t for t in reversed(tokens[:i]) if not t.group().isspace()), None)
        after = next((t for t in tokens[i + 1 :] if not t.group().isspace()), None)
        if before is not None and before.group() in (".", "::"):
            continue  # a qualified name's part, or a type
        if after is not None and after.group() in ("(", "."):
            continue  # a function, or a qualifier
        if kind == "quoted":
            name = token.group()[1:-1].replace('""', '"')
        else:
            word = token.group()
            if word.upper() in _KEYWORDS:
                continue
            name = word.lower()
        found.append((token.start(), token.end(), name))
    return found


# Words pg_get_*def prints that are not column references.
_KEYWORD_TEXT = """
    AND OR NOT NULL IS TRUE FALSE IN ANY ALL SOME ARRAY LIKE ILIKE SIMILAR TO BETWEEN SYMMETRIC
    CASE WHEN THEN ELSE END COLLATE DISTINCT FROM ESCAPE UNKNOWN CHECK VALID INHERIT NO AT TIME
    ZONE INTERVAL OVERLAPS ISNULL NOTNULL CAST AS USING CHARACTER VARYING VARCHAR TEXT INTEGER
    BIGINT SMALLINT NUMERIC BOOLEAN DOUBLE PRECISION TIMESTAMP WITH WITHOUT DATE CHAR
"""
_KEYWORDS = frozenset(_KEYWORD_TEXT.split())


def columns_of(text: str) -> set[str]:
    """The column names `text` refers to."""
    return {name for _, _, name in _references(text)}


def substitute(text: str, column: str, replacement: str) -> str:
    """`text` with every reference to `column` replaced by `(replacement)`."""
    out = []
    last = 0
    for start, end, name in _references(text):
        if name == column:
            out.append(text[last:start])
            out.append(f"({replacement})")
            last = end
    out.append(text[last:])
    return "".join(out)


def check_body(definition: str) -> str | None:
    """The expression of a CHECK constraint definition, or None when it is not one."""
    match = _CHECK.match(definition.strip())
    return match["body"] if match else None

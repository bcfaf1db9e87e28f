"""The mapping's constants (reserved names, unverified providers, the character classes the
username cleaning uses, the confusables table) and the bodies of the installed functions that
return them, written compactly: regular-expression brackets of code point ranges.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Sequence
from functools import cache

from psycopg import sql

from profileguard.mapping.confusables import MARK_CATEGORIES, confusable_table
from profileguard.mapping.plan import Plan

# Controls, format characters (bidi overrides, zero-width), line and paragraph separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
# Space separators (Zs) trimmed at both ends.
SPACE_CATEGORIES = frozenset({"Zs"})
# The lines of a constant's body: cut at this width, and never longer than the longest line.
WIDTH = 116
LONGEST = 120


@cache
def char_class(categories: frozenset[str]) -> str:
    """A regular-expression bracket of the code points of `categories` (NUL excluded), as ranges
    of hexadecimal escapes ([\\x300-\\x36f\\x483-\\x489…])."""
    ranges: list[list[int]] = []
    for code in range(1, sys.maxunicode + 1):
        if unicodedata.category(chr(code)) in categories:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "[" + "".join(f"\\x{a:x}" + (f"-\\x{b:x}" if b > a else "") for a, b in ranges) + "]"


def character_classes() -> dict[str, str]:
    """The constants that do not depend on the configuration: what cleaning removes."""
    spaces = char_class(SPACE_CATEGORIES)
    return {
        "invisible_characters": char_class(INVISIBLE_CATEGORIES),
        "edge_spaces": f"^{spaces}+|{spaces}+$",
        # A name the rare path decides: one that may be a JSON array or object printed as text,
        # or one the cleaning would leave empty (no character NFKC keeps but spaces).
        "rare_names": "^[{[]|^" + char_class(INVISIBLE_CATEGORIES | SPACE_CATEGORIES) + "+$",
        "combining_marks": char_class(MARK_CATEGORIES),
    }


def constants(plan: Plan) -> dict[str, str | list[str]]:
    """The mapping's constants, by the name of the installed function that returns each."""
    policy = plan.settings.username
    reserved = sorted({n.lower() for n in policy.reserved})
    return {
        "reserved_names": reserved,
        "unverified_providers": sorted(policy.unverified_providers),
        **character_classes(),
        **_confusables(plan, reserved),
    }


def _confusables(plan: Plan, reserved: list[str]) -> dict[str, str]:
    """translate()'s from and to of the reserved names' skeletons (see mapping/confusables.py):
    none without reserved names, or where the database cannot normalize (not UTF8)."""
    constraints = plan.username_constraints
    if not reserved or constraints is None or not constraints.nfkc:
        return {"confusable_characters": "", "confusable_prototypes": ""}
    characters, prototypes = confusable_table(reserved)
    return {"confusable_characters": characters, "confusable_prototypes": prototypes}


def constant_bodies(plan: Plan, width: int = WIDTH) -> dict[str, sql.Composable]:
    """Each constant as the expression its function returns, in lines of at most `width`
    characters: a list an element after another; a regular expression dollar-quoted (its escapes
    are the regex engine's, whatever standard_conforming_strings is), cut between ranges, the
    line breaks removed by translate(); other texts with each character that is not ASCII as its
    Unicode escape."""
    regexes = character_classes()
    bodies: dict[str, sql.Composable] = {}
    for name, value in constants(plan).items():
        if isinstance(value, list):
            text = _array(value, width)
        elif name in regexes:
            text = _regex(value, width)
        elif value.isascii():
            text = _concatenated([c.replace("'", "''") for c in value], "'", "'", width)
        else:
            text = _concatenated([_escaped(c) for c in value], "E'", "'", width)
        bodies[name] = sql.SQL(text)
    return bodies


def _regex(value: str, width: int) -> str:
    """`value` (no white space in it) dollar-quoted; when longer than a line (or ending with the
    anchor $, which would run into the quote), over several lines cut between ranges, translate()
    removing the line breaks and indentation."""
    assert not re.search(r"\s", value), value
    if len(value) + len("    select $re$$re$") <= LONGEST and not value.endswith("$"):
        return f"$re${value}$re$"
    lines, line = [], ""
    for token in re.findall(r"\\x[0-9a-f]+(?:-\\x[0-9a-f]+)?|.", value, re.S):
        if line and len(line) + len(token) > width - 4:
            lines.append(line)
            line = ""
        line += token
    lines.append(line)
    text = "\n    ".join(lines)
    return f"pg_catalog.translate($re$\n    {text}\n    $re$, E' \\n', '')"


def _array(items: list[str], width: int) -> str:
    """`items` as a text[] literal, elements filling lines of at most `width` characters."""
    if not items:
        return "array[]::pg_catalog.text[]"
    lines, line = [], ""
    for item in (sql.Literal(v).as_string(None) for v in items):
        if line and len(line) + len(item) + 10 > width:
            lines.append(line + ",")
            line = ""
        line = f"{line}, {item}" if line else item
    lines.append(line)
    return "array[\n        " + "\n        ".join(lines) + "\n    ]::pg_catalog.text[]"


def _concatenated(tokens: Sequence[str], opening: str, closing: str, width: int) -> str:
    """`tokens` as quoted strings joined by ||, a string a line of at most `width` characters
    (a token is never cut)."""
    room = width - len("    || ") - len(opening) - len(closing)
    pieces, piece = [], ""
    for token in tokens:
        if piece and len(piece) + len(token) > room:
            pieces.append(piece)
            piece = ""
        piece += token
    pieces.append(piece)
    return "\n    || ".join(opening + p + closing for p in pieces)


def _escaped(char: str) -> str:
    """`char` as it is written in an E'' string."""
    if char in "\\'":
        return "\\" + char
    if char.isascii():
        return char
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"

"""Unicode TR39 confusables (confusables.txt, as the confusable_homoglyphs package ships it),
limited to what the reserved names need: each character that looks like one a reserved name
uses, and that character. A name is compared with the reserved ones on its skeleton: lowercased,
decomposed (NFKD), combining marks removed, each such character replaced by the one it looks
like (`skeleton` here; `reserved_confusable` in the installed SQL does the same).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from functools import cache

# Combining marks (nonspacing, spacing, enclosing): removed from a decomposed name, so that
# 'admi̇n' (i and a combining dot above) is compared as 'admin'.
MARK_CATEGORIES = frozenset({"Mn", "Mc", "Me"})
# confusables.txt's comments wrap right-to-left characters in these marks (the package keeps
# them): they are not part of the characters.
_DIRECTION_MARKS = str.maketrans("", "", "\u200e\u200f")
# Characters cleaning removes before any comparison (controls, format characters, separators).
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Zs"})


@cache
def _neighbours() -> dict[str, frozenset[str]]:
    """Each character or sequence of confusables.txt with those it is confusable with (the
    package lists every pair both ways)."""
    from confusable_homoglyphs import confusables  # type: ignore[import-untyped]

    found: dict[str, set[str]] = {}
    for key, entries in confusables.confusables_data.items():
        char = key.translate(_DIRECTION_MARKS)
        others = found.setdefault(char, set())
        others.update(entry["c"].translate(_DIRECTION_MARKS) for entry in entries)
    return {char: frozenset(others) for char, others in found.items()}


def decomposed(name: str) -> str:
    """`name` lowercased, NFKD, without combining marks: the skeleton before confusables."""
    text = unicodedata.normalize("NFKD", name.lower())
    return "".join(c for c in text if unicodedata.category(c) not in MARK_CATEGORIES)


def confusable_table(names: Iterable[str]) -> tuple[str, str]:
    """(from, to) for translate(): every single character confusable with exactly one of the
    characters `names` use once decomposed (compared lowercased), and that character. The
    characters of `names` are never in `from`, so a reserved name is its own skeleton."""
    alphabet = {c for name in names for c in decomposed(name)}
    table: dict[str, str] = {}
    for char, others in _neighbours().items():
        if len(char) != 1 or char in alphabet or char.lower() in alphabet:
            continue
        if (
            unicodedata.normalize("NFKD", char) != char
            or unicodedata.category(char) in MARK_CATEGORIES | _REMOVED_CATEGORIES
        ):
            continue  # never left in a decomposed, cleaned name
        looks = {o.lower() for o in others if len(o) == 1 and o.lower() in alphabet}
        if len(looks) == 1:
            table[char] = looks.pop()
    chars = sorted(table)
    return "".join(chars), "".join(table[c] for c in chars)


def skeleton(name: str, table: tuple[str, str]) -> str:
    """`name`'s skeleton under `table` (see `confusable_table`)."""
    return decomposed(name).translate(str.maketrans(table[0], table[1]))

"""The SQL that profileguard installs and runs, read from the .sql files beside this module."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
QUERY_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    """One numbered migration file."""

    version: int
    name: str
    text: str


@cache
def read(name: str) -> str:
    """The text of the .sql file `name` in this package."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration, in version order; versions are unique, start at 1 and may have gaps.

    Gaps are allowed because install applies every migration the database has not recorded
    (not only those above its highest version), so numbers reserved for changes written in
    parallel can land in any order.
    """
    found = []
    for entry in resources.files(__name__).joinpath("migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if not versions or versions[0] != 1 or len(set(versions)) != len(versions):
        raise RuntimeError(f"migration versions must be unique and start at 1: {versions}")
    return tuple(found)


def latest_version() -> int:
    """The schema version a fresh install ends at."""
    return migrations()[-1].version


@cache
def queries(file: str = "queries.sql") -> dict[str, str]:
    """Named queries from `file` (each starts with a '-- name: x' line)."""
    text = read(file)
    parts = QUERY_HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str, file: str = "queries.sql") -> str:
    """One named query from `file` (queries.sql by default)."""
    return queries(file)[name]

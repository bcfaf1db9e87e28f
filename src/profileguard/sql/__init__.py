"""The SQL that profileguard installs and runs, read from the .sql files beside this module.

schema/ holds the tables as they are now (what a fresh install creates), migrations/ the table and
data changes between schema versions (what an upgrade runs), functions/ every function that does
not depend on the mapping (re-created by each install and upgrade), queries/ the named queries the
Python runs, fixtures/ the Supabase-shaped schema and the demo's legacy app. The files at the top
are the install's templates (the mapping-dependent functions, the triggers on the identity table,
privileges).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
QUERY_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
# In a migration, what follows this line runs after the functions are created: triggers on
# profileguard's tables and data steps that call a function.
AFTER_FUNCTIONS = re.compile(r"^-- after the functions:\s*$", re.MULTILINE)
# The function files, in the order install creates them (each file's functions may call those of
# the files before it; triggers and data steps that call them come after all of them).
FUNCTION_FILES = ("admin", "failures", "repair", "observe", "invariant")


@dataclass(frozen=True)
class Migration:
    """One numbered migration file: its table and data changes (`text`), and what runs once the
    functions exist (`after_functions`)."""

    version: int
    name: str
    text: str
    after_functions: str = ""


@dataclass(frozen=True)
class Schema:
    """What a fresh install creates: the tables, then (after the functions) their triggers."""

    tables: str
    after_functions: str


def _split(text: str) -> tuple[str, str]:
    parts = AFTER_FUNCTIONS.split(text, maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


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
            before, after = _split(entry.read_text(encoding="utf-8"))
            found.append(Migration(int(match[1]), match[2], before, after))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if not versions or versions[0] != 1 or len(set(versions)) != len(versions):
        raise RuntimeError(f"migration versions must be unique and start at 1: {versions}")
    return tuple(found)


def latest_version() -> int:
    """The schema version a fresh install ends at."""
    return migrations()[-1].version


def schema() -> Schema:
    """The tables as they are now (schema/tables.sql) and their triggers (schema/triggers.sql)."""
    return Schema(read("schema/tables.sql"), read("schema/triggers.sql"))


def functions() -> str:
    """Every function that does not depend on the mapping, in FUNCTION_FILES order."""
    return "\n".join(read(f"functions/{name}.sql") for name in FUNCTION_FILES)


@cache
def queries(file: str = "queries/catalog.sql") -> dict[str, str]:
    """Named queries from `file` (each starts with a '-- name: x' line)."""
    text = read(file)
    parts = QUERY_HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str, file: str = "queries/catalog.sql") -> str:
    """One named query from `file` (queries/catalog.sql by default)."""
    return queries(file)[name]

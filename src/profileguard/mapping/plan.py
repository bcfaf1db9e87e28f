"""The plan: which identity values feed which profile columns, the username's rule and the
constraints it must pass, read from the configuration and the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard import sqlexpr
from profileguard.catalog import Column, TableFacts, inspect_table, table_oid
from profileguard.config import Settings, Source
from profileguard.errors import ConfigError
from profileguard.mapping import legacy
from profileguard.mapping.guards import Guards, read_guards

# Used as the username base when the column is NOT NULL and no source has a value.
USERNAME_FALLBACK = "user"
# Hex digits of the key's hash in a suffix; the longer one is tried when the short one is taken.
SHORT_SUFFIX = 8
LONG_SUFFIX = 16


@dataclass(frozen=True)
class UniqueKey:
    """One unique index on the username column: its key expression as the server prints it, the
    predicate of a partial index, the collation it compares with (when not the column's)."""

    name: str
    key: str
    predicate: str | None
    collation: str | None


@dataclass(frozen=True)
class UsernameConstraints:
    """How derived usernames are cleaned, checked against the table and kept unique."""

    column: str
    unique: bool
    min_length: int | None
    max_length: int | None
    not_null: bool
    keys: tuple[UniqueKey, ...] = ()
    checks: tuple[tuple[str, str], ...] = ()  # (name, CHECK expression on the column alone)
    provider: Source | None = None
    lower_collation: str | None = None
    nfkc: bool = True
    ignored: tuple[str, ...] = ()  # unique indexes and checks it cannot evaluate


@dataclass(frozen=True)
class Plan:
    """The mapping checked against the real tables, ready to be rendered as SQL."""

    settings: Settings
    identity: TableFacts
    profile: TableFacts
    mapping: Mapping[str, tuple[Source, ...]]
    key_type: str
    username_constraints: UsernameConstraints | None
    notes: tuple[str, ...] = field(default=())
    guards: Guards = field(default=Guards())

    @property
    def key_is_uuid(self) -> bool:
        return self.key_type == "uuid"


def _resolve_sources(
    settings: Settings, identity: TableFacts, profile: TableFacts
) -> tuple[dict[str, tuple[Source, ...]], list[str]]:
    """Keep the mapping entries the tables support; a user-written mapping must fit exactly."""
    lenient = settings.mapping_is_default
    resolved: dict[str, tuple[Source, ...]] = {}
    notes: list[str] = []
    for column, sources in settings.mapping.items():
        key = f"mapping.{column}"
        target = profile.columns.get(column)
        if target is None or target.generated or column == settings.profile.key:
            if lenient:
                notes.append(f"{profile.ref} has no column {column!r}; not filled")
                continue
            raise ConfigError(
                f"{key}: {profile.ref} has no writable column {column!r}",
                hint=f"remove {key} from profileguard.toml or add the column to {profile.ref}",
            )
        usable = []
        for source in sources:
            src_col = identity.columns.get(source.column)
            problem = None
            if src_col is None:
                problem = f"{identity.ref} has no column {source.column!r}"
            elif source.path and not src_col.is_json:
                problem = f"{identity.ref}.{source.column} is {src_col.type}, not json/jsonb"
            if problem is None:
                usable.append(source)
            elif lenient:
                notes.append(f"{key}: skipped source {source} ({problem})")
            else:
                raise ConfigError(
                    f"{key}: source {source}: {problem}",
                    hint=f"fix {key} in profileguard.toml",
                )
        if usable:
            resolved[column] = tuple(usable)
    return resolved, notes


def build_plan(
    conn: psycopg.Connection, settings: Settings, *, profile_facts: TableFacts | None = None
) -> Plan:
    """Inspect both tables and check the mapping against them.

    `profile_facts` describes a profile table about to be created (install renders its
    functions before the table exists). After a takeover the mapping the legacy trigger's
    function implied is the default (legacy.adopt); the plan's settings are the ones in effect."""
    settings, learned_notes = legacy.adopt(
        settings, legacy.recorded(conn, settings.identity, settings.profile), taking_over=False
    )
    identity = inspect_table(conn, settings.identity)
    if identity is None:
        raise ConfigError(
            f"identity table {settings.identity} does not exist",
            hint="set identity.table in profileguard.toml (or PROFILEGUARD_IDENTITY_TABLE) "
            "to the table that holds your users",
        )
    if settings.identity.key not in identity.columns:
        raise ConfigError(
            f"identity.key: {settings.identity} has no column {settings.identity.key!r}",
            hint="set identity.key to the users table's primary key column",
        )
    profile = profile_facts or inspect_table(conn, settings.profile)
    if profile is None:
        raise ConfigError(
            f"profile table {settings.profile} does not exist",
            hint="run: profileguard install --create-profile-table "
            "(or set profile.table to your existing table)",
        )
    pkey = profile.columns.get(settings.profile.key)
    if pkey is None or settings.profile.key not in profile.unique:
        raise ConfigError(
            f"profile.key: {settings.profile}.{settings.profile.key} is not a unique key",
            hint=f"add a primary key or unique constraint on {settings.profile}"
            f"({settings.profile.key}), or set profile.key to the column that has one",
        )
    key_type = identity.columns[settings.identity.key].type
    if pkey.type != key_type:
        raise ConfigError(
            f"profile.key: {settings.profile}.{settings.profile.key} is {pkey.type} but "
            f"{settings.identity}.{settings.identity.key} is {key_type}",
            hint="the profile key must have the same type as the identity key",
        )
    mapping, notes = _resolve_sources(settings, identity, profile)
    notes = learned_notes + notes
    constraints = None
    ucol = settings.username_column
    if ucol and ucol in mapping and profile.columns[ucol].is_text:
        constraints = _username_constraints(conn, settings, identity, profile, ucol)
        notes.extend(f"username: {text}" for text in constraints.ignored)
    guards = read_guards(conn, profile, settings.profile.key)
    return Plan(settings, identity, profile, mapping, key_type, constraints, tuple(notes), guards)


def _username_constraints(
    conn: psycopg.Connection,
    settings: Settings,
    identity: TableFacts,
    profile: TableFacts,
    ucol: str,
) -> UsernameConstraints:
    """What the table demands of `ucol` (unique keys, checks, length) and the policy adds."""
    policy = settings.username
    column = profile.columns[ucol]
    low, high = profile.length_bounds(ucol)
    low = max(low or 1, policy.min_length)
    high = min(high if high is not None else policy.max_length, policy.max_length)
    if policy.pattern is not None:
        try:
            conn.execute("select '' ~ %s", (policy.pattern,))
        except psycopg.Error as exc:
            raise ConfigError(
                f"username.pattern: {policy.pattern!r} is not a PostgreSQL regular expression: "
                f"{exc.diag.message_primary}",
                hint="fix username.pattern in profileguard.toml, e.g. '^[a-z0-9_]{3,24}$'",
            ) from None
    facts = username_constraints(conn, profile, ucol)
    provider = policy.provider_source
    if provider is not None:
        src = identity.columns.get(provider.column)
        if src is None or (provider.path and not src.is_json):
            provider = None  # no provenance recorded: every name is the operator's or the user's
    row = conn.execute("select current_setting('server_encoding')").fetchone()
    nfkc = bool(row and row[0] == "UTF8")
    found = conn.execute(sqlfiles.query("unicode_collation")).fetchone()
    return UsernameConstraints(
        column=ucol,
        unique=bool(facts.keys) or ucol in profile.unique,
        min_length=low,
        max_length=high,
        # NOT NULL with a default too: the insert names the column, so NULL would not default.
        not_null=column.not_null,
        keys=facts.keys,
        checks=facts.checks,
        provider=provider,
        lower_collation=str(found[0]) if found and found[0] else None,
        nfkc=nfkc,
        ignored=facts.ignored,
    )


@dataclass(frozen=True)
class ColumnConstraints:
    """The unique keys and CHECK constraints of one column that candidates are tested against."""

    keys: tuple[UniqueKey, ...]
    checks: tuple[tuple[str, str], ...]
    ignored: tuple[str, ...]


def _planned_constraints(profile: TableFacts, column: str) -> ColumnConstraints:
    """What `username_constraints` will read of a table not created yet (install renders its
    functions before it creates the profile table): its unique column and its CHECKs, named as
    PostgreSQL names them."""
    ref = profile.ref
    keys: tuple[UniqueKey, ...] = ()
    if column in profile.unique:
        keys = (UniqueKey(f"{ref.schema}.{ref.name}_{column}_key"[:63], column, None, None),)
    checks = tuple(
        (f"{ref.name}_{column}_check", unwrapped(body))
        for body in (sqlexpr.check_body(text) for text in profile.checks)
        if body is not None and sqlexpr.columns_of(body) == {column}
    )
    return ColumnConstraints(keys, checks, ())


def unwrapped(body: str) -> str:
    """`(expr)` as `expr`, as the catalog prints a CHECK when asked for the pretty form."""
    if not (body.startswith("(") and body.endswith(")")):
        return body
    depth = 0
    for i, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and i < len(body) - 1:
            return body  # the first parenthesis closes before the end: not one group
    return body[1:-1]


def username_constraints(
    conn: psycopg.Connection, profile: TableFacts, column: str
) -> ColumnConstraints:
    """Unique indexes whose key is `column` alone (plain, expression or partial) and CHECK
    constraints on `column` alone, as expressions of it; the others are named in `ignored`.

    Printed with an empty search_path, so every function and type in them is schema-qualified.
    """
    oid = table_oid(conn, profile.ref)
    if oid is None:
        return _planned_constraints(profile, column)
    row = conn.execute("select current_setting('search_path')").fetchone()
    search_path = str(row[0]) if row else "public"
    keys: list[UniqueKey] = []
    checks: list[tuple[str, str]] = []
    ignored: list[str] = []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select set_config('search_path', '', false)")
        try:
            indexes = cur.execute(sqlfiles.query("unique_indexes"), {"oid": oid}).fetchall()
            constraints = cur.execute(sqlfiles.query("checks_by_column"), {"oid": oid}).fetchall()
        finally:
            cur.execute("select set_config('search_path', %s, false)", (search_path,))
    for index in indexes:
        key = str(index["key"])
        used = sqlexpr.columns_of(key)
        if column not in used:
            continue
        if index["keys"] != 1 or used != {column}:
            ignored.append(
                f"unique index {index['name']} combines {column} with other columns or keys: "
                "names are not checked against it, a collision is a recorded failure"
            )
            continue
        keys.append(UniqueKey(str(index["name"]), key, index["predicate"], index["collation"]))
    for check in constraints:
        body = sqlexpr.check_body(str(check["definition"]))
        if list(check["columns"]) != [column] or body is None:
            if column in check["columns"]:
                ignored.append(
                    f"check constraint {check['name']} involves other columns: names are not "
                    "tested against it, a violation is a recorded failure"
                )
            continue
        checks.append((str(check["name"]), body))
    return ColumnConstraints(tuple(keys), tuple(checks), tuple(ignored))


def source_expr(source: Source, alias: str = "u") -> sql.Composable:
    """SQL text for one source, as text, NULL when missing or blank."""
    col = sql.Identifier(alias, source.column)
    expr: sql.Composable
    if not source.path:
        expr = sql.SQL("{}::text").format(col)
    elif len(source.path) == 1:
        expr = sql.SQL("({} ->> {})").format(col, sql.Literal(source.path[0]))
    else:
        expr = sql.SQL("({} #>> {})").format(col, sql.Literal(list(source.path)))
    if source.transform == "localpart":
        expr = sql.SQL("split_part({}, '@', 1)").format(expr)
    elif source.transform == "lower":
        expr = sql.SQL("lower({})").format(expr)
    return sql.SQL("nullif(btrim({}), '')").format(expr)


def coalesced(sources: tuple[Source, ...]) -> sql.Composable:
    parts = [source_expr(s) for s in sources]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(parts))


def cast(expr: sql.Composable, column: Column) -> sql.Composable:
    # The type text comes from format_type() in the catalog, never from configuration.
    return sql.SQL("({})::{}").format(expr, sql.SQL(column.type))


# Unicode categories never kept in a username: controls (Cc), format characters (Cf: bidi
# overrides and isolates such as U+202E, zero-width characters, soft hyphen, tags) and line and
# paragraph separators (Zl, Zp). Listed as explicit ranges: PostgreSQL's [[:cntrl:]] misses U+202E
# and its classes follow the database's locale.


def coalesced_as(sources: tuple[Source, ...], alias: str) -> sql.Composable:
    parts = [source_expr(s, alias) for s in sources]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(parts))

"""Turn the configured mapping into SQL: how one profile row is derived from one identity row.

The same INSERT … SELECT serves every path (trigger, ensure, repair, the client's fallback), so the
profile a user gets does not depend on which path created it. Identifiers are composed with
`psycopg.sql`; JSON keys are literals; column types come from the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from profileguard.catalog import Column, TableFacts, inspect_table
from profileguard.config import Settings, Source
from profileguard.errors import ConfigError

# Used as the username base when the column is NOT NULL and no source has a value.
USERNAME_FALLBACK = "user"
# Characters of the key used in the short suffix; the forced retry uses the whole key.
SHORT_SUFFIX = 8


@dataclass(frozen=True)
class UsernameGuard:
    """How derived usernames are kept unique and within length bounds."""

    column: str
    unique: bool
    min_length: int | None
    max_length: int | None
    not_null: bool


@dataclass(frozen=True)
class Plan:
    """The mapping checked against the real tables, ready to be rendered as SQL."""

    settings: Settings
    identity: TableFacts
    profile: TableFacts
    mapping: Mapping[str, tuple[Source, ...]]
    key_type: str
    guard: UsernameGuard | None
    notes: tuple[str, ...] = field(default=())

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
    functions before the table exists)."""
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
    guard = None
    ucol = settings.username_column
    if ucol and ucol in mapping:
        low, high = profile.length_bounds(ucol)
        column = profile.columns[ucol]
        if ucol in profile.unique or low is not None or high is not None:
            guard = UsernameGuard(
                ucol, ucol in profile.unique, low, high, column.not_null and not column.has_default
            )
    return Plan(settings, identity, profile, mapping, key_type, guard, tuple(notes))


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


def _coalesced(sources: tuple[Source, ...]) -> sql.Composable:
    parts = [source_expr(s) for s in sources]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(parts))


def _cast(expr: sql.Composable, column: Column) -> sql.Composable:
    # The type text comes from format_type() in the catalog, never from configuration.
    return sql.SQL("({})::{}").format(expr, sql.SQL(column.type))


def _username_expr(
    plan: Plan, guard: UsernameGuard, inner: sql.Identifier, *, long_suffix: bool
) -> sql.Composable:
    """Base name, or base + '_' + key suffix when it is taken, duplicated or too short.

    The suffix is the first characters of the key (the whole key when `long_suffix`, used on
    the retry after a unique violation), so the name a user gets is deterministic.
    """
    column = plan.profile.columns[guard.column]
    base = sql.SQL("s.{}").format(inner)
    suffix: sql.Composable = sql.SQL("replace(s.pg_key::text, '-', '')")
    if plan.key_is_uuid and not long_suffix:
        suffix = sql.SQL("left({}, {})").format(suffix, sql.Literal(SHORT_SUFFIX))
    if guard.max_length is not None:
        room = sql.SQL("greatest(0, {} - 1 - char_length({}))").format(
            sql.Literal(guard.max_length), suffix
        )
        suffixed = sql.SQL("left({}, {}) || '_' || {}").format(base, room, suffix)
        plain = sql.SQL("left({}, {})").format(base, sql.Literal(guard.max_length))
    else:
        suffixed = sql.SQL("{} || '_' || {}").format(base, suffix)
        plain = base
    needs: list[sql.Composable] = []
    if guard.min_length is not None:
        needs.append(sql.SQL("char_length({}) < {}").format(base, sql.Literal(guard.min_length)))
    if guard.unique:
        # Compare the name as it would be stored (cut to the maximum length): names that differ
        # only past the limit collide too.
        needs.append(
            sql.SQL("row_number() over (partition by {} order by s.pg_key) > 1").format(plain)
        )
        needs.append(
            sql.SQL("exists (select from {} x where x.{} = {})").format(
                sql.Identifier(plan.profile.ref.schema, plan.profile.ref.name),
                sql.Identifier(guard.column),
                _cast(plain, column),
            )
        )
    if not needs:
        return _cast(plain, column)
    expr = sql.SQL("case when {needs} then {suffixed} else {plain} end").format(
        needs=sql.SQL(" or ").join(needs), suffixed=suffixed, plain=plain
    )
    return _cast(expr, column)


def insert_statement(
    plan: Plan,
    *,
    source: sql.Composable,
    where: sql.Composable = sql.SQL(""),
    force_suffix: bool = False,
) -> sql.Composed:
    """INSERT … SELECT … ON CONFLICT (key) DO NOTHING creating profiles for rows of `source`.

    `source` is the identity table or a transition table (aliased `u`); `where` filters it.
    `force_suffix` is the retry after a unique violation: suffixed usernames use the whole key.
    """
    settings = plan.settings
    inner_cols: list[sql.Composable] = [
        sql.SQL("u.{} as pg_key").format(sql.Identifier(settings.identity.key))
    ]
    outer_cols: list[sql.Composable] = [sql.SQL("s.pg_key")]
    targets = [sql.Identifier(settings.profile.key)]
    for index, (column, sources) in enumerate(plan.mapping.items()):
        inner = sql.Identifier(f"pg_c{index}")
        value = _coalesced(sources)
        guard = plan.guard
        if guard is not None and column == guard.column:
            if guard.not_null:
                value = sql.SQL("coalesce({}, {})").format(value, sql.Literal(USERNAME_FALLBACK))
            outer = _username_expr(plan, guard, inner, long_suffix=force_suffix)
        else:
            outer = _cast(sql.SQL("s.{}").format(inner), plan.profile.columns[column])
        inner_cols.append(sql.SQL("{} as {}").format(value, inner))
        outer_cols.append(outer)
        targets.append(sql.Identifier(column))
    statement = sql.SQL(
        "insert into {profile} ({targets})\n"
        "select {outer}\n"
        "from (select {inner} from {source} u {where}) s\n"
        "on conflict ({pkey}) do nothing"
    ).format(
        profile=sql.Identifier(settings.profile.schema, settings.profile.name),
        targets=sql.SQL(", ").join(targets),
        outer=sql.SQL(", ").join(outer_cols),
        inner=sql.SQL(", ").join(inner_cols),
        source=source,
        where=where,
        pkey=sql.Identifier(settings.profile.key),
    )
    return statement

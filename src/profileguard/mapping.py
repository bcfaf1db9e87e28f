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


def build_plan(conn: psycopg.Connection, settings: Settings) -> Plan:
    """Inspect both tables and check the mapping against them."""
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
    profile = inspect_table(conn, settings.profile)
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
    on_conflict: bool = True,
) -> sql.Composed:
    """INSERT … SELECT … ON CONFLICT (key) DO NOTHING creating profiles for rows of `source`.

    `source` is the identity table or a transition table (aliased `u`); `where` filters it.
    `force_suffix` is the retry after a unique violation: suffixed usernames use the whole key.
    Without `on_conflict` it is a plain INSERT (the trigger's first try: new users have no
    profile, and a speculative insertion per row costs a bulk insert a quarter of its time).
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
        "from (select {inner} from {source} u {where}) s"
        "{conflict}"
    ).format(
        profile=sql.Identifier(settings.profile.schema, settings.profile.name),
        targets=sql.SQL(", ").join(targets),
        outer=sql.SQL(", ").join(outer_cols),
        inner=sql.SQL(", ").join(inner_cols),
        source=source,
        where=where,
        conflict=sql.SQL("\non conflict ({}) do nothing").format(
            sql.Identifier(settings.profile.key)
        ) if on_conflict else sql.SQL(""),
    )
    return statement


# ---------------------------------------------------------------- after creation: update, delete

# The identity column Supabase Auth sets on a soft delete (it also clears both metadata columns
# and replaces the email with a hash in the same UPDATE).
DELETED_COLUMN = "deleted_at"


@dataclass(frozen=True)
class SyncPlan:
    """How profiles follow their users after creation: the columns kept in step (per policy),
    the columns redacted on soft delete, and the identity columns the UPDATE triggers watch."""

    follow: Mapping[str, tuple[Source, ...]]
    fill_empty: Mapping[str, tuple[Source, ...]]
    redact: tuple[str, ...]
    deleted_column: str | None
    notes: tuple[str, ...] = field(default=())

    @property
    def synced(self) -> dict[str, tuple[Source, ...]]:
        """Every column kept in step (follow and fill_empty), in mapping order."""
        return {**self.follow, **self.fill_empty}

    @property
    def watched(self) -> tuple[str, ...]:
        """The identity columns whose change can change a profile (for UPDATE OF)."""
        columns = [s.column for sources in self.synced.values() for s in sources]
        if self.redact and self.deleted_column:
            columns.append(self.deleted_column)
        return tuple(dict.fromkeys(columns))


def build_sync(plan: Plan) -> SyncPlan:
    """Check the [sync] policies and [delete] redact columns against the mapping and tables."""
    from profileguard.config import update_policy

    settings = plan.settings
    notes: list[str] = []
    for column in settings.sync_policies:
        if column not in plan.mapping:
            raise ConfigError(
                f"sync.{column}: {column!r} is not a mapped profile column",
                hint=f"remove sync.{column} or add mapping.{column} in profileguard.toml",
            )
    follow: dict[str, tuple[Source, ...]] = {}
    fill_empty: dict[str, tuple[Source, ...]] = {}
    for column, sources in plan.mapping.items():
        policy = update_policy(settings, column)
        if policy == "follow":
            follow[column] = sources
        elif policy == "fill_empty":
            fill_empty[column] = sources
    deleted = DELETED_COLUMN if DELETED_COLUMN in plan.identity.columns else None
    explicit = settings.redact_columns is not None
    wanted = settings.redact_columns if settings.redact_columns is not None else tuple(
        c for c in plan.mapping if c != settings.username_column
    )
    redact: list[str] = []
    for column in wanted:
        target = plan.profile.columns.get(column)
        problem = None
        if target is None or target.generated or column == settings.profile.key:
            problem = f"{plan.profile.ref} has no writable column {column!r}"
        elif target.not_null:
            problem = f"{plan.profile.ref}.{column} is NOT NULL and cannot be cleared"
        if problem is None:
            redact.append(column)
        elif explicit:
            raise ConfigError(
                f"delete.redact: {problem}",
                hint="remove it from delete.redact in profileguard.toml",
            )
        else:
            notes.append(f"delete.redact: {problem}; not redacted")
    if redact and deleted is None:
        notes.append(f"{plan.identity.ref} has no {DELETED_COLUMN} column: no soft delete to "
                     "redact on")
    return SyncPlan(follow, fill_empty, tuple(redact), deleted, tuple(notes))


def when_changed(sync: SyncPlan) -> sql.Composable:
    """The row trigger's WHEN: a watched source column or the deletion state changed (never a
    login that only moves last_sign_in_at, nor metadata rewritten with the same values).

    Whole columns are compared (jsonb equality ignores key order), not the mapped values: the
    condition is rebuilt for every UPDATE statement, and a short one keeps a login cheap. A change
    to an unmapped key only queues the user; the sync then finds nothing to write.
    """
    parts: list[sql.Composable] = []
    for column in sync.watched:
        ident = sql.Identifier(column)
        parts.append(sql.SQL("old.{} is distinct from new.{}").format(ident, ident))
    if not parts:
        return sql.SQL("false")
    return sql.SQL(" or ").join(parts)


def _coalesced_as(sources: tuple[Source, ...], alias: str) -> sql.Composable:
    parts = [source_expr(s, alias) for s in sources]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(parts))


def _empty(column: sql.Composable) -> sql.Composable:
    return sql.SQL("({col} is null or btrim({col}::text) = '')").format(col=column)


def _drift_terms(
    plan: Plan, sync: SyncPlan, own_tx: sql.Composable
) -> list[tuple[str, sql.Composable, sql.Composable]]:
    """Per synced column: (name, the value to store, the condition that it differs from it).

    `s.pg_cN` is the source value; `own_tx` is true where a fill_empty column may be overwritten
    although it is not empty (the profile was created by this very transaction, from the row as
    it was before this update: an admin-created user).
    """
    terms: list[tuple[str, sql.Composable, sql.Composable]] = []
    index = {column: i for i, column in enumerate(plan.mapping)}
    for column in sync.synced:
        target = plan.profile.columns[column]
        col = sql.SQL("p.{}").format(sql.Identifier(column))
        value = _cast(sql.SQL("s.{}").format(sql.Identifier(f"pg_c{index[column]}")), target)
        if column in sync.follow:
            stored = sql.SQL("coalesce({}, {})").format(value, col) if target.not_null else value
            differs = sql.SQL("{} is distinct from {}").format(col, stored)
        else:
            may = sql.SQL("({} or {})").format(_empty(col), own_tx)
            stored = sql.SQL("case when {may} and {v} is not null then {v} else {col} end").format(
                may=may, v=value, col=col
            )
            differs = sql.SQL("({may} and {v} is not null and {col} is distinct from {v})").format(
                may=may, v=value, col=col
            )
        terms.append((column, stored, differs))
    return terms


def _sources_of(plan: Plan, sync: SyncPlan, where: sql.Composable) -> sql.Composable:
    """The synced source values of the identity rows `where` selects (alias s, key pg_key)."""
    index = {column: i for i, column in enumerate(plan.mapping)}
    cols: list[sql.Composable] = [
        sql.SQL("u.{} as pg_key").format(sql.Identifier(plan.settings.identity.key))
    ]
    for column, sources in sync.synced.items():
        cols.append(sql.SQL("{} as {}").format(
            _coalesced(sources), sql.Identifier(f"pg_c{index[column]}")
        ))
    if sync.deleted_column:
        cols.append(sql.SQL("u.{} is not null as pg_deleted").format(
            sql.Identifier(sync.deleted_column)
        ))
    else:
        cols.append(sql.SQL("false as pg_deleted"))
    return sql.SQL("(select {} from {} u {}) s").format(
        sql.SQL(", ").join(cols),
        sql.Identifier(plan.settings.identity.schema, plan.settings.identity.name),
        where,
    )


def sync_statement(plan: Plan, sync: SyncPlan, where: sql.Composable,
                   own_tx: sql.Composable = sql.SQL("false")) -> sql.Composable | None:
    """UPDATE … FROM (identity rows `where` selects): the synced columns of users not deleted,
    only where a value differs (so an unchanged profile is never written). RETURNING the key."""
    terms = _drift_terms(plan, sync, own_tx)
    if not terms:
        return None
    pkey = sql.Identifier(plan.settings.profile.key)
    return sql.SQL(
        "update {profile} p set {sets}\nfrom {source}\n"
        "where p.{pkey} = s.pg_key and not s.pg_deleted and ({differs})\nreturning p.{pkey}"
    ).format(
        profile=sql.Identifier(plan.settings.profile.schema, plan.settings.profile.name),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), stored) for c, stored, _ in terms
        ),
        source=_sources_of(plan, sync, where),
        pkey=pkey,
        differs=sql.SQL(" or ").join(d for _, _, d in terms),
    )


def redact_statement(plan: Plan, sync: SyncPlan, where: sql.Composable) -> sql.Composable | None:
    """UPDATE setting the redacted columns of soft-deleted users to NULL (where not yet)."""
    if not sync.redact or not sync.deleted_column:
        return None
    pkey = sql.Identifier(plan.settings.profile.key)
    return sql.SQL(
        "update {profile} p set {sets}\nfrom {source}\n"
        "where p.{pkey} = s.pg_key and s.pg_deleted and ({filled})\nreturning p.{pkey}"
    ).format(
        profile=sql.Identifier(plan.settings.profile.schema, plan.settings.profile.name),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = null").format(sql.Identifier(c)) for c in sync.redact
        ),
        source=_sources_of(plan, sync, where),
        pkey=pkey,
        filled=sql.SQL(" or ").join(
            sql.SQL("p.{} is not null").format(sql.Identifier(c)) for c in sync.redact
        ),
    )


def drift_select(plan: Plan, sync: SyncPlan, where: sql.Composable) -> sql.Composable:
    """SELECT key, drifted columns ('redact' for a deleted user's uncleared profile) of the
    profiles of the identity rows `where` selects whose values disagree with their source."""
    terms = _drift_terms(plan, sync, sql.SQL("false"))
    cases: list[sql.Composable] = [
        sql.SQL("case when not s.pg_deleted and {} then {} end").format(d, sql.Literal(c))
        for c, _, d in terms
    ]
    if sync.redact and sync.deleted_column:
        cases.append(sql.SQL("case when s.pg_deleted and ({}) then 'redact' end").format(
            sql.SQL(" or ").join(
                sql.SQL("p.{} is not null").format(sql.Identifier(c)) for c in sync.redact
            )
        ))
    if not cases:
        cases.append(sql.SQL("null::text"))
    pkey = sql.Identifier(plan.settings.profile.key)
    return sql.SQL(
        "select d.pg_key, d.pg_columns from (\n"
        "select s.pg_key, array_remove(array[{cases}]::text[], null) as pg_columns\n"
        "from {source} join {profile} p on p.{pkey} = s.pg_key) d\n"
        "where cardinality(d.pg_columns) > 0"
    ).format(
        cases=sql.SQL(", ").join(cases),
        source=_sources_of(plan, sync, where),
        profile=sql.Identifier(plan.settings.profile.schema, plan.settings.profile.name),
        pkey=pkey,
    )

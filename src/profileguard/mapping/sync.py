"""After creation: which profile columns follow or fill from their user, and the UPDATE, redaction
and drift statements built from that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from psycopg import sql

from profileguard.catalog import Column
from profileguard.config import Source
from profileguard.errors import ConfigError
from profileguard.mapping.insert import username_update_layers
from profileguard.mapping.plan import Plan, cast, coalesced
from profileguard.sqlformat import Formatted

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
    wanted = (
        settings.redact_columns
        if settings.redact_columns is not None
        else tuple(c for c in plan.mapping if c != settings.username_column)
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
        notes.append(
            f"{plan.identity.ref} has no {DELETED_COLUMN} column: no soft delete to redact on"
        )
    return SyncPlan(follow, fill_empty, tuple(redact), deleted, tuple(notes))


def when_changed(sync: SyncPlan) -> sql.Composable:
    """The row trigger's WHEN: a watched source column or the deletion state changed (never a
    login that only moves last_sign_in_at, nor metadata rewritten with the same values).

    Whole columns are compared (jsonb equality ignores key order), not the mapped values: the
    condition is rebuilt for every UPDATE statement, and a short one keeps a login cheap. A change
    to an unmapped key only queues the user; the sync then finds nothing to write. A comparison
    a line.
    """
    parts: list[sql.Composable] = []
    for column in sync.watched:
        ident = sql.Identifier(column)
        parts.append(sql.SQL("old.{} is distinct from new.{}").format(ident, ident))
    if not parts:
        return sql.SQL("false")
    return Formatted(sql.SQL("\nor ").join(parts).as_string(None))


def _empty(column: sql.Composable, target: Column) -> sql.Composable:
    """True while `column` holds nothing but blanks (or NULL)."""
    text = column if target.type == "text" else sql.SQL("{}::text").format(column)
    return sql.SQL("coalesce(btrim({}), '') = ''").format(text)


def _drift_terms(
    plan: Plan, sync: SyncPlan, own_tx: sql.Composable | None
) -> list[tuple[str, sql.Composable, sql.Composable]]:
    """Per synced column: (name, the value to store, the condition that it differs from it).

    `s.pg_cN` is the source value; `own_tx` (if any) is true where a fill_empty column may be
    overwritten although it is not empty (the profile was created by this very transaction, from
    the row as it was before this update: an admin-created user). The username's source value is
    the name the username rule accepts, NULL when it accepts none: the stored name then stays.
    """
    terms: list[tuple[str, sql.Composable, sql.Composable]] = []
    index = {column: i for i, column in enumerate(plan.mapping)}
    username = _username_rule(plan)
    for column in sync.synced:
        target = plan.profile.columns[column]
        col = sql.SQL("p.{}").format(sql.Identifier(column))
        value: sql.Composable = sql.SQL("s.{}").format(sql.Identifier(f"pg_c{index[column]}"))
        if column == username:
            value = _typed(value, target)
        kept = sql.SQL("coalesce({}, {})").format(value, col)
        if column in sync.follow:
            stored = kept if target.not_null or column == username else value
            differs = sql.SQL("{} is distinct from {}").format(col, stored)
        else:
            may = _empty(col, target)
            if own_tx is not None:
                may = sql.SQL("{} or {}").format(may, own_tx)
            stored = sql.SQL("case when {} then {} else {} end").format(may, kept, col)
            differs = sql.SQL("({}) and {} is distinct from {}").format(may, kept, col)
        terms.append((column, stored, differs))
    return terms


def _sources_of(plan: Plan, sync: SyncPlan, scope: sql.Composable | None) -> sql.Composable:
    """The synced source values, cast to their columns' types, of the identity rows `scope`
    selects (all without it; alias s, key pg_key), and their deletion state. A synced username's
    value is made by the username rule (`username_update_layers`), in selects above the one
    that reads the rows."""
    index = {column: i for i, column in enumerate(plan.mapping)}
    cols: list[sql.Composable] = [
        sql.SQL("u.{} as pg_key").format(sql.Identifier(plan.settings.identity.key))
    ]
    username = _username_rule(plan)
    layers: list[tuple[list[sql.Composable], str]] = []
    for column, sources in sync.synced.items():
        if column == username:
            inner, layers = username_update_layers(plan, f"pg_c{index[column]}")
            cols.extend(inner)
            continue
        cols.append(
            sql.SQL("{} as {}").format(
                _typed(coalesced(sources), plan.profile.columns[column]),
                sql.Identifier(f"pg_c{index[column]}"),
            )
        )
    cols.append(_deleted(sync))
    below: sql.Composable = sql.SQL("(select {} from {} u{})").format(
        sql.SQL(", ").join(cols),
        sql.Identifier(plan.settings.identity.schema, plan.settings.identity.name),
        sql.SQL("") if scope is None else sql.SQL(" where {}").format(scope),
    )
    # OFFSET 0 keeps each select one (each name cleaned once per row, as in the insert).
    for columns, alias_below in layers:
        below = sql.SQL("(select {} from {} {} offset 0)").format(
            sql.SQL(", ").join(columns), below, sql.SQL(alias_below)
        )
    return sql.SQL("{} s").format(below)


def _typed(value: sql.Composable, target: Column) -> sql.Composable:
    """A source value (text) cast to the column's type."""
    return value if target.type == "text" else cast(value, target)


def _deleted(sync: SyncPlan) -> sql.Composable:
    if sync.deleted_column is None:
        return sql.SQL("false as pg_deleted")
    return sql.SQL("u.{} is not null as pg_deleted").format(sql.Identifier(sync.deleted_column))


def _username_rule(plan: Plan) -> str | None:
    """The username column when the mapping fills it by the username rule."""
    constraints = plan.username_constraints
    if constraints is None or constraints.column not in plan.mapping:
        return None
    return constraints.column


def _redacted_filled(sync: SyncPlan) -> sql.Composable:
    """True while a redacted column of the profile p still holds a value."""
    return sql.SQL(" or ").join(
        sql.SQL("p.{} is not null").format(sql.Identifier(c)) for c in sync.redact
    )


def sync_statement(
    plan: Plan,
    sync: SyncPlan,
    scope: sql.Composable | None,
    own_tx: sql.Composable | None = None,
) -> sql.Composable | None:
    """UPDATE … FROM (the identity rows `scope` selects): the synced columns of users not deleted,
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
        source=_sources_of(plan, sync, scope),
        pkey=pkey,
        differs=sql.SQL(" or ").join(d for _, _, d in terms),
    )


def redact_statement(
    plan: Plan, sync: SyncPlan, scope: sql.Composable | None
) -> sql.Composable | None:
    """UPDATE setting the redacted columns of soft-deleted users (of `scope`) to NULL where not
    yet. RETURNING the key."""
    if not sync.redact or not sync.deleted_column:
        return None
    pkey = sql.Identifier(plan.settings.profile.key)
    return sql.SQL(
        "update {profile} p set {sets}\nfrom {identity} u\n"
        "where p.{pkey} = u.{ikey} and u.{deleted} is not null{scope} and ({filled})\n"
        "returning p.{pkey}"
    ).format(
        profile=sql.Identifier(plan.settings.profile.schema, plan.settings.profile.name),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = null").format(sql.Identifier(c)) for c in sync.redact
        ),
        identity=sql.Identifier(plan.settings.identity.schema, plan.settings.identity.name),
        ikey=sql.Identifier(plan.settings.identity.key),
        deleted=sql.Identifier(sync.deleted_column),
        scope=sql.SQL("") if scope is None else sql.SQL(" and {}").format(scope),
        pkey=pkey,
        filled=_redacted_filled(sync),
    )


def drift_select(plan: Plan, sync: SyncPlan, scope: sql.Composable) -> sql.Composable:
    """SELECT key, pg_columns: per profile of the identity rows `scope` selects, the columns
    whose values disagree with their source ('redact' for a deleted user's uncleared profile);
    empty where none does."""
    cases: list[sql.Composable] = [
        sql.SQL("case when not s.pg_deleted and {} then {} end").format(d, sql.Literal(c))
        for c, _, d in _drift_terms(plan, sync, None)
    ]
    if sync.redact and sync.deleted_column:
        cases.append(
            sql.SQL("case when s.pg_deleted and ({}) then 'redact' end").format(
                _redacted_filled(sync)
            )
        )
    if not cases:
        cases.append(sql.SQL("null::text"))
    return sql.SQL(
        "select s.pg_key, array_remove(array[{cases}], null) as pg_columns\n"
        "from {source} join {profile} p on p.{pkey} = s.pg_key"
    ).format(
        cases=sql.SQL(", ").join(cases),
        source=_sources_of(plan, sync, scope),
        profile=sql.Identifier(plan.settings.profile.schema, plan.settings.profile.name),
        pkey=sql.Identifier(plan.settings.profile.key),
    )

"""The short install transaction: what locks the identity table (the profile table's foreign
key, profileguard's trigger, the takeover of legacy triggers)."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from profileguard.catalog import table_oid
from profileguard.config import Settings, TableRef
from profileguard.errors import ConfigError
from profileguard.install import takeover
from profileguard.install.profile_table import foreign_key_name
from profileguard.install.run import InstallResult, Recorder
from profileguard.install.templates import (
    config_event,
    render_sync_triggers,
    template,
    trigger_statement,
)
from profileguard.mapping import build_sync


def identity_phase(
    rec: Recorder,
    settings: Settings,
    result: InstallResult,
    *,
    create_profile_table: bool,
    replace_triggers: Sequence[str],
    source: str,
) -> None:
    """What locks the identity table, kept short and last: the profile table's foreign key,
    profileguard's triggers, and the takeover of legacy triggers (in one step, so that exactly
    one of them creates profiles at any moment); each only when not already as it should be.
    Reads first, then writes; the tables those writes lock go to `result.locked_tables`."""
    conn = rec.conn
    identity = settings.identity
    oid = table_oid(conn, identity)
    profile_oid = table_oid(conn, settings.profile)
    add_key = False
    if create_profile_table:
        if profile_oid is None:
            add_key = True
        elif oid is not None:
            row = conn.execute(
                takeover.query("foreign_key_to"), {"profile": profile_oid, "identity": oid}
            ).fetchone()
            add_key = not (row and row[0])
    row = conn.execute(takeover.query("profileguard_trigger_current"), {"oid": oid}).fetchone()
    trigger_current = bool(row and row[0])
    sync_current = _sync_triggers_current(rec, result, oid)
    takeovers = []
    for name in dict.fromkeys(replace_triggers):
        step = takeover.plan(conn, identity, name)
        if step is None:
            result.notes.append(f"trigger {name} on {identity} is already taken over or disabled")
        else:
            takeovers.append(step)

    parts = {
        "identity": sql.Identifier(identity.schema, identity.name),
        "identity_key": sql.Identifier(identity.key),
        "profile": sql.Identifier(settings.profile.schema, settings.profile.name),
        "profile_key": sql.Identifier(settings.profile.key),
        "constraint": sql.Identifier(foreign_key_name(settings)),
    }
    locked: list[TableRef] = []
    if add_key:
        rec.run(template("profile_foreign_key.sql", **parts))
        locked += [identity, settings.profile]
        result.changed = True
    if not trigger_current:
        rec.run(trigger_statement(settings))
        locked.append(identity)
        result.changed = True
    if result.plan is not None and not sync_current:
        rec.run(render_sync_triggers(result.plan))
        locked.append(identity)
        result.changed = True
    for step in takeovers:
        rec.run(step.statement)
        if step.method != "function":  # a trigger re-created; a function's body locks no table
            locked.append(identity)
        _record_takeover(rec, identity, step)
        result.replaced_triggers.append(step.name)
        result.notes.append(step.note)
        result.changed = True
    result.locked_tables = list(dict.fromkeys(locked))
    if takeovers:
        names = ", ".join(result.replaced_triggers)
        rec.run(
            config_event(
                source,
                f"{source}: took over from {names}",
                {
                    "replaced_triggers": result.replaced_triggers,
                    "methods": {s.name: s.method for s in takeovers},
                },
            )
        )


def _sync_triggers_current(rec: Recorder, result: InstallResult, oid: int | None) -> bool:
    """Whether the UPDATE triggers are as sync_triggers.sql would create them: their definitions
    follow the configuration and the package, so while neither changed they are re-created only
    when missing, disabled or watching other columns."""
    if result.plan is None or result.config_changed:
        return False
    watched = build_sync(result.plan).watched or (result.plan.settings.identity.key,)
    row = rec.conn.execute(
        takeover.query("sync_triggers_current"), {"oid": oid, "watched": list(watched)}
    ).fetchone()
    return bool(row and row[0])


def _record_takeover(rec: Recorder, identity: TableRef, step: takeover.Takeover) -> None:
    """Save what uninstall needs to give the legacy trigger back."""
    rec.run(
        sql.SQL(
            "insert into profileguard.replaced_triggers"
            " (table_name, trigger_name, function_name, previous_mode, method,"
            " saved_definition)"
            " values ({}, {}, {}, {}, {}, {})"
            " on conflict (table_name, trigger_name) do update"
            " set function_name = excluded.function_name,"
            " previous_mode = excluded.previous_mode, method = excluded.method,"
            " saved_definition = excluded.saved_definition, replaced_at = now()"
        ).format(
            *map(
                sql.Literal,
                (
                    str(identity),
                    step.name,
                    step.function,
                    step.previous_mode,
                    step.method,
                    step.saved_definition,
                ),
            )
        )
    )


def takeover_enables(enabled: bool | None, replace_triggers: Sequence[str]) -> bool | None:
    """Taking over from a legacy trigger enables profileguard in the same step: otherwise no
    trigger would create profiles between the two."""
    if not replace_triggers:
        return enabled
    if enabled is False:
        raise ConfigError(
            "--replace-trigger with --disabled would leave no trigger creating profiles",
            hint="install --disabled first (and backfill), then "
            "profileguard install --replace-trigger NAME, which enables profileguard",
        )
    return True

"""The short install transaction: what locks the identity table (the profile table's foreign
key, profileguard's trigger, the takeover of legacy triggers)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import psycopg
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.catalog import table_oid
from profileguard.config import Settings, TableRef
from profileguard.errors import ConfigError, UsageError
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
from profileguard.sqlformat import json_text


def identity_phase(
    rec: Recorder,
    settings: Settings,
    result: InstallResult,
    *,
    create_profile_table: bool,
    replace_triggers: Sequence[str],
    source: str,
    keep_triggers: Sequence[str] = (),
) -> None:
    """What locks the identity table, kept short and last: the profile table's foreign key,
    profileguard's triggers, and the takeover of legacy triggers (in one step, so that exactly
    one of them creates profiles at any moment); each only when not already as it should be; the
    triggers kept beside it are recorded. Reads first, then writes; the tables those writes lock
    go to `result.locked_tables`."""
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
        step = takeover.plan(conn, identity, name, settings.profile)
        if step is None:
            result.notes.append(f"trigger {name} on {identity} is already taken over or disabled")
        else:
            takeovers.append(step)
    kept = takeover.kept_triggers(conn, identity)
    keep = [_keepable(conn, settings, name) for name in dict.fromkeys(keep_triggers)]
    dropped = [name for name in dict.fromkeys(replace_triggers) if name in kept]

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
    for name, function in keep:
        if name in kept:
            continue  # recorded before: installing again changes nothing
        rec.run(
            sql.SQL(
                "insert into profileguard.kept_triggers (table_name, trigger_name, function_name)"
                "\nvalues ({}, {}, {})\non conflict (table_name, trigger_name) do nothing"
            ).format(*map(sql.Literal, (str(identity), name, function)))
        )
        result.notes.append(
            f"trigger {name} on {identity} is kept beside profileguard: both create profiles, "
            "and an error in it still fails the sign-up (audit reports it as kept_trigger)"
        )
        result.changed = True
    for name in dropped:  # taken over now: no longer kept
        rec.run(
            sql.SQL(
                "delete from profileguard.kept_triggers"
                "\nwhere table_name = {} and trigger_name = {}"
            ).format(sql.Literal(str(identity)), sql.Literal(name))
        )
    newly_kept = [name for name, _ in keep if name not in kept]
    if newly_kept:
        rec.run(
            config_event(
                source,
                f"{source}: kept {', '.join(newly_kept)} beside profileguard",
                {"kept_triggers": newly_kept},
            )
        )
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
    """Save what uninstall needs to give the legacy trigger back, and what its function filled
    (the mapping in effect while none is configured)."""
    rec.run(
        sql.SQL(
            "insert into profileguard.replaced_triggers"
            " (table_name, trigger_name, function_name, previous_mode, method,"
            "\n    saved_definition, learned_mapping)"
            "\nvalues ({}, {}, {}, {}, {},\n{},\n{})"
            "\non conflict (table_name, trigger_name) do update"
            " set function_name = excluded.function_name,"
            "\n    previous_mode = excluded.previous_mode, method = excluded.method,"
            "\n    saved_definition = excluded.saved_definition,"
            "\n    learned_mapping = excluded.learned_mapping, replaced_at = now()"
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
                    None if step.learned is None else json_text(step.learned.as_json()),
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


def _keepable(conn: psycopg.Connection, settings: Settings, name: str) -> tuple[str, str]:
    """(name, function) of a trigger `--keep-trigger` may keep: one on the identity table, not
    profileguard's own, not taken over."""
    trigger = takeover.legacy_trigger(conn, settings.identity, name)
    if trigger is None or trigger["internal"] or name == takeover.OWN_TRIGGER:
        raise ConfigError(
            f"--keep-trigger: {settings.identity} has no trigger {name!r} to keep",
            hint="run: profileguard audit (it lists the triggers on the identity table)",
        )
    if takeover.is_neutralised(trigger):
        raise UsageError(
            f"--keep-trigger: trigger {name!r} on {settings.identity} was taken over and creates "
            "no profiles",
            hint="profileguard uninstall gives it back as it was",
        )
    return name, str(trigger["function"])


def check_trigger_choice(
    conn: psycopg.Connection,
    settings: Settings,
    *,
    enabled: bool | None,
    replace_triggers: Sequence[str],
    keep_triggers: Sequence[str],
    command: str,
    then: str = "",
) -> list[str]:
    """Refuse to enable profileguard beside a trigger that also creates profiles, unless each
    such trigger is named with --replace-trigger or --keep-trigger (or was kept before): both
    would run on every sign-up, and an error in the other one still fails it. `command` is the
    one the hint names (`then`: what to run after keeping). Returns notes for an install that
    leaves profileguard disabled beside such a trigger. Reads only."""
    both = sorted(set(replace_triggers) & set(keep_triggers))
    if both:
        raise UsageError(
            f"{', '.join(both)} is named by both --replace-trigger and --keep-trigger",
            hint="name each trigger once: --replace-trigger to take over from it, "
            "--keep-trigger to keep it beside profileguard",
        )
    # Each name is checked now, before anything changes (the identity phase comes last).
    for name in dict.fromkeys(replace_triggers):
        takeover.plan(conn, settings.identity, name)
    for name in dict.fromkeys(keep_triggers):
        _keepable(conn, settings, name)
    chosen = {*replace_triggers, *keep_triggers}
    undecided = [
        str(t["name"])
        for t in takeover.identity_triggers(conn, settings.identity, settings.profile)
        if t["role"] == "competing" and t["name"] not in chosen
    ]
    if not undecided:
        return []
    names = ", ".join(undecided)
    if not _will_be_enabled(conn, enabled):
        return [
            f"trigger {names} on {settings.identity} also creates profiles; profileguard stays "
            f"disabled beside it: profileguard {command} --replace-trigger NAME takes over and "
            "enables profileguard in one step"
        ]

    def flags(option: str) -> str:
        return " ".join(f"{option} {shlex.quote(name)}" for name in undecided)

    raise UsageError(
        f"trigger {names} on {settings.identity} also creates profiles: beside "
        "profileguard's trigger both would run on every sign-up, and an error in it would still "
        "fail the sign-up; nothing was changed",
        hint=f"choose: profileguard {command} {flags('--replace-trigger')} (take over: it stops "
        "creating profiles, profileguard uninstall gives it back), or profileguard "
        f"{command} {flags('--keep-trigger')}{then} (keep both, knowingly: audit reports it)",
    )


def _will_be_enabled(conn: psycopg.Connection, enabled: bool | None) -> bool:
    """Whether profileguard's trigger creates profiles after this install: as asked, else as
    installed, else (a first install) enabled."""
    if enabled is not None:
        return enabled
    row = conn.execute("select to_regclass('profileguard.settings') is not null").fetchone()
    if not (row and row[0]):
        return True
    current = conn.execute(sqlfiles.query("settings")).fetchone()
    return True if current is None else bool(current[0])

"""Take over from a legacy profile-creating trigger, and give it back, without owning its table;
and which triggers on the identity table create profiles at all (install's and audit's one view).

On hosted Supabase the installing role has every privilege on auth.users but does not own it, so
`ALTER TABLE … DISABLE TRIGGER` and `DROP TRIGGER` fail. Two things work instead: replacing the
body of the trigger's own function with a no-op (when this role owns the function and no other
trigger uses it; takes no lock on the table), or re-creating the trigger `WHEN (false)` (CREATE OR
REPLACE TRIGGER needs only the TRIGGER privilege). Either way the original definition is saved,
qualified, so that `uninstall` can restore it exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.catalog import qualified, table_oid
from profileguard.config import TableRef
from profileguard.errors import ConfigError
from profileguard.installation import TRIGGER_NAME, UPDATE_TRIGGER_NAMES
from profileguard.mapping import legacy

OWN_TRIGGER = "profileguard_after_insert"
# Written into the no-op body, so that audit and uninstall recognise a neutralised function.
MARKER = "profileguard: replaced by `profileguard install --replace-trigger`"
NOOP_BODY = f"""
begin
    -- {MARKER};
    -- `profileguard uninstall` restores the original body.
    if tg_op = 'DELETE' then
        return old;
    end if;
    return new;
end
"""
_CREATE_TRIGGER = "CREATE TRIGGER "
_MODES = {"O": "enabled", "A": "enabled always", "R": "enabled on replicas only"}


@dataclass
class Takeover:
    """How one legacy trigger is neutralised: the statement, and what restores it."""

    name: str
    function: str
    method: str  # 'function' or 'never_fires'
    previous_mode: str
    statement: sql.Composable
    saved_definition: str
    note: str
    learned: legacy.LegacyMapping | None = None


def query(name: str) -> str:
    """A named catalog query of takeover.sql."""
    return sqlfiles.queries("queries/takeover.sql")[name]


@dataclass
class _Qualified:
    """Run catalog reads with an empty search_path (definitions come out schema-qualified)."""

    conn: psycopg.Connection

    def rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with qualified(self.conn) as cur:
            return cur.execute(query(name), params).fetchall()


def writes_pattern(ref: TableRef) -> str:
    """A regular expression matching an INSERT/UPDATE/MERGE of `ref`, qualified or not."""
    name = ref.name.replace("$", r"\$")
    schema_name = ref.schema.replace("$", r"\$")
    return (
        r"(insert\s+into|update|merge\s+into)\s+(only\s+)?"
        rf'("?{schema_name}"?\s*\.\s*)?"?{name}"?([^a-z0-9_$]|$)'
    )


def kept_triggers(conn: psycopg.Connection, identity: TableRef) -> set[str]:
    """The triggers on the identity table `install --keep-trigger` recorded (none before
    profileguard is installed)."""
    row = conn.execute("select to_regclass('profileguard.kept_triggers') is not null").fetchone()
    if not (row and row[0]):
        return set()
    rows = _Qualified(conn).rows("kept_triggers", {"table": str(identity)})
    return {str(r["trigger_name"]) for r in rows}


def identity_triggers(
    conn: psycopg.Connection, identity: TableRef, profile: TableRef
) -> list[dict[str, Any]]:
    """Every user trigger on the identity table but profileguard's own, each with its `role`:

    'taken_over' (its function is profileguard's no-op), 'other' (its function writes no
    profile), 'inactive' (it writes profiles but is disabled or re-created WHEN (false)),
    'kept' (it creates profiles beside profileguard: `install --keep-trigger`), 'competing' (it
    creates profiles too). Whether a function writes profiles is read from its source: an
    INSERT, UPDATE or MERGE of the profile table.
    """
    oid = table_oid(conn, identity)
    if oid is None:
        return []
    writes = re.compile(writes_pattern(profile), re.IGNORECASE)
    kept = kept_triggers(conn, identity)
    found = []
    for trigger in _Qualified(conn).rows("identity_triggers", {"oid": oid}):
        name = trigger["name"]
        if name == TRIGGER_NAME or name in UPDATE_TRIGGER_NAMES:
            continue
        if MARKER in trigger["source"]:
            role = "taken_over"
        elif not writes.search(trigger["source"]):
            role = "other"
        elif trigger["mode"] == "D" or trigger["never_fires"]:
            role = "inactive"
        else:
            role = "kept" if name in kept else "competing"
        found.append({**trigger, "role": role})
    return found


def legacy_trigger(
    conn: psycopg.Connection, identity: TableRef, name: str
) -> dict[str, Any] | None:
    """The catalog's description of trigger `name` on the identity table (None if absent)."""
    oid = table_oid(conn, identity)
    if oid is None:
        return None
    found = _Qualified(conn).rows("legacy_trigger", {"oid": oid, "name": name})
    return found[0] if found else None


def is_neutralised(trigger: dict[str, Any]) -> bool:
    """True when the trigger was already taken over (no-op function body, or WHEN (false))."""
    return bool(trigger["never_fires"]) or MARKER in str(trigger["source"])


def never_fires_statement(trigger: dict[str, Any], identity: TableRef) -> sql.Composed:
    """`CREATE OR REPLACE TRIGGER` for the same trigger (events, level, function, arguments)
    that never fires: `WHEN (false)`."""
    kind = trigger["type"]
    timing = "before" if kind & 2 else "instead of" if kind & 64 else "after"
    events: list[sql.Composable] = []
    if kind & 4:
        events.append(sql.SQL("insert"))
    if kind & 8:
        events.append(sql.SQL("delete"))
    if kind & 16:
        columns = trigger["update_columns"] or []
        events.append(
            sql.SQL("update of {}").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
            if columns
            else sql.SQL("update")
        )
    if kind & 32:
        events.append(sql.SQL("truncate"))
    referencing: list[sql.Composable] = []
    if trigger["old_table"]:
        referencing.append(sql.SQL("old table as {}").format(sql.Identifier(trigger["old_table"])))
    if trigger["new_table"]:
        referencing.append(sql.SQL("new table as {}").format(sql.Identifier(trigger["new_table"])))
    raw = bytes(trigger["args"] or b"")
    args = [a.decode() for a in raw.split(b"\x00")[: trigger["nargs"]]]
    return sql.SQL(
        "create or replace trigger {name} {timing} {events} on {table}{referencing}"
        " for each {level} when (false) execute function {function}({args})"
    ).format(
        name=sql.Identifier(trigger["name"]),
        timing=sql.SQL(timing),
        events=sql.SQL(" or ").join(events),
        table=sql.Identifier(identity.schema, identity.name),
        referencing=sql.SQL(" referencing {}").format(sql.SQL(" ").join(referencing))
        if referencing
        else sql.SQL(""),
        level=sql.SQL("row" if kind & 1 else "statement"),
        function=sql.SQL(trigger["function_name"]),
        args=sql.SQL(", ").join(sql.Literal(a) for a in args),
    )


def learn_trigger(
    trigger: dict[str, Any], profile: TableRef, identity_key: str
) -> legacy.LegacyMapping:
    """What the function of a legacy trigger (catalog row) fills, read with pglast."""
    if trigger["language"] != "plpgsql" or not trigger["function_definition"]:
        return legacy.LegacyMapping(
            str(trigger["name"]),
            str(trigger["function"]),
            unlearned=(f"its function is written in {trigger['language']}",),
        )
    return legacy.learn(
        str(trigger["function_definition"]),
        trigger=str(trigger["name"]),
        function=str(trigger["function"]),
        profile=profile,
        identity_key=identity_key,
    )


def learned(
    conn: psycopg.Connection, identity: TableRef, profile: TableRef, names: Sequence[str]
) -> list[legacy.LegacyMapping]:
    """What the triggers `names` fill: read from their functions, or, for one taken over
    already, as its takeover recorded it."""
    if not names:
        return []
    recorded = {item.trigger: item for item in legacy.recorded(conn, identity, profile)}
    found = []
    for name in dict.fromkeys(names):
        trigger = legacy_trigger(conn, identity, name)
        if trigger is None:
            continue
        if name in recorded and (is_neutralised(trigger) or trigger["mode"] == "D"):
            found.append(recorded[name])
        elif not is_neutralised(trigger):
            found.append(learn_trigger(trigger, profile, identity.key))
    return found


def plan(
    conn: psycopg.Connection, identity: TableRef, name: str, profile: TableRef | None = None
) -> Takeover | None:
    """How to neutralise trigger `name` (with what its function fills, read when `profile` is
    given); None when it already is (or is disabled)."""
    trigger = legacy_trigger(conn, identity, name)
    if trigger is None or trigger["internal"] or name == OWN_TRIGGER:
        raise ConfigError(
            f"--replace-trigger: {identity} has no trigger {name!r} to replace",
            hint="run: profileguard audit (it lists the triggers on the identity table)",
        )
    if trigger["is_constraint"]:
        raise ConfigError(
            f"--replace-trigger: {name!r} on {identity} is a constraint trigger; profileguard "
            "cannot neutralise it without owning the table",
            hint=f"have the table's owner run: drop trigger {name} on {identity}",
        )
    if trigger["mode"] == "D" or is_neutralised(trigger):
        return None
    found = None if profile is None else learn_trigger(trigger, profile, identity.key)
    mode_note = ""
    if trigger["mode"] != "O":
        mode_note = (
            f"; it was {_MODES[trigger['mode']]}, and CREATE OR REPLACE TRIGGER restores it as "
            "plainly enabled (the table's owner can set the mode again)"
        )
    if (
        trigger["owns_function"]
        and trigger["function_uses"] == 1
        and trigger["language"] in ("plpgsql", "sql")
    ):
        statement = sql.SQL(
            "create or replace function {function} returns trigger language plpgsql"
            "\nset search_path = pg_catalog, pg_temp\nas {body}"
        ).format(function=sql.SQL(trigger["function"]), body=sql.Literal(NOOP_BODY))
        return Takeover(
            name,
            trigger["function"],
            "function",
            trigger["mode"],
            statement,
            trigger["function_definition"],
            f"trigger {name} on {identity} now does nothing: the body of its function "
            f"{trigger['function']} was replaced by a no-op (saved; profileguard uninstall "
            "restores it)",
            found,
        )
    definition = str(trigger["trigger_definition"])
    if not definition.startswith(_CREATE_TRIGGER):
        raise ConfigError(f"--replace-trigger: unexpected definition of {name!r}: {definition}")
    why = (
        "this role does not own its function"
        if not trigger["owns_function"]
        else "its function is used by other triggers"
        if trigger["function_uses"] != 1
        else f"its function is written in {trigger['language']}"
    )
    return Takeover(
        name,
        trigger["function"],
        "never_fires",
        trigger["mode"],
        never_fires_statement(trigger, identity),
        definition,
        f"trigger {name} on {identity} was re-created WHEN (false), so it never fires ({why}); "
        f"profileguard uninstall re-creates it as it was{mode_note}",
        found,
    )


def restore_statement(
    conn: psycopg.Connection, identity: TableRef, item: dict[str, Any]
) -> tuple[sql.SQL | None, str]:
    """The statement that gives back the legacy trigger recorded in `item`, and a note."""
    name = str(item["trigger_name"])
    trigger = legacy_trigger(conn, identity, name)
    if trigger is None:
        return None, f"trigger {name} is gone from {identity}; nothing to restore"
    method = item["method"]
    if method == "function":
        if MARKER not in str(trigger["source"]):
            return None, (
                f"function {trigger['function']} was changed since the takeover; left as it is"
            )
        return sql.SQL(item["saved_definition"]), (
            f"restored the body of {trigger['function']} (trigger {name})"
        )
    if method == "never_fires":
        if not trigger["never_fires"]:
            return None, f"trigger {name} was changed since the takeover; left as it is"
        definition = str(item["saved_definition"])
    else:  # 'disabled' by an earlier version: re-creating the trigger enables it again
        if trigger["mode"] != "D":
            return None, f"trigger {name} is enabled already"
        definition = str(trigger["trigger_definition"])
    note = f"re-created trigger {name} on {identity} as it was"
    if item["previous_mode"] != "O":
        note += (
            f" (it was {_MODES[item['previous_mode']]}; it is plainly enabled now: the "
            "table's owner can set the mode again)"
        )
    return sql.SQL("CREATE OR REPLACE TRIGGER " + definition[len(_CREATE_TRIGGER) :]), note

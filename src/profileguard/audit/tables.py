"""Checks of the tables themselves: do the identity and profile tables exist, is the profile
table's key a foreign key to the users."""

from __future__ import annotations

import re

from psycopg import sql

from profileguard.audit.report import Context, Finding
from profileguard.catalog import table_oid
from profileguard.mapping.guards import read_guards

# How long each step of the foreign key fix may wait for a lock (the users table is busy).
FK_FIX_LOCK_TIMEOUT = "3s"


def check_tables(ctx: Context) -> list[Finding]:
    """The identity and profile tables exist."""
    found = []
    if ctx.identity is None or ctx.settings.identity.key not in ctx.identity.columns:
        found.append(
            Finding(
                "identity_table_missing",
                "error",
                f"identity table {ctx.settings.identity} (key {ctx.settings.identity.key}) "
                "does not exist",
                {"identity_table": str(ctx.settings.identity)},
                "set identity.table and identity.key in profileguard.toml to your users table",
            )
        )
    elif ctx.profile is None:
        found.append(
            Finding(
                "profile_table_missing",
                "error",
                f"profile table {ctx.settings.profile} does not exist",
                {"profile_table": str(ctx.settings.profile)},
                "profileguard install --create-profile-table",
            )
        )
    return found


def check_foreign_keys(ctx: Context) -> list[Finding]:
    """Foreign keys to the identity table that block deleting a user."""
    if ctx.identity is None:
        return []
    found = []
    oid = table_oid(ctx.conn, ctx.settings.identity)
    for fk in ctx.rows("identity_foreign_keys", {"oid": oid}):
        definition = re.sub(r"\s+ON DELETE (RESTRICT|NO ACTION)", "", fk["definition"])
        definition = re.sub(
            r"(REFERENCES\s+\S+\([^)]*\)(?:\s+MATCH\s+\w+)?)",
            r"\1 ON DELETE CASCADE",
            definition,
            count=1,
        )
        table = sql.SQL(fk["table_name"])
        name = sql.Identifier(fk["name"])
        # NOT VALID: the new constraint is checked only for new rows, so the first step holds
        # its locks (on the profile table and, briefly, the users table that every login
        # updates) for an instant; VALIDATE then checks existing rows under a lock that lets
        # reads and writes go on. Each step gives up instead of queueing behind a long lock.
        steps = [
            sql.SQL(
                "set lock_timeout = {}; alter table {} drop constraint {}, add constraint {} "
                "{} not valid;"
            ).format(sql.Literal(FK_FIX_LOCK_TIMEOUT), table, name, name, sql.SQL(definition)),
            sql.SQL("set lock_timeout = {}; alter table {} validate constraint {};").format(
                sql.Literal(FK_FIX_LOCK_TIMEOUT), table, name
            ),
        ]
        found.append(
            Finding(
                "fk_blocks_user_deletion",
                "warning",
                f"foreign key {fk['name']} on {fk['table_name']} blocks deleting users "
                "(no ON DELETE CASCADE)",
                {
                    "table": fk["table_name"],
                    "constraint": fk["name"],
                    "definition": fk["definition"],
                    "note": "run the steps in order; if one times out on a lock, run it again",
                },
                "\n".join(ctx.text(step) for step in steps),
            )
        )
    return found


def check_deferred_constraints(ctx: Context) -> list[Finding]:
    """Deferrable constraints and deferred constraint triggers on the profile table: each runs at
    COMMIT, where a violation fails the sign-up, unless profileguard's functions check it first
    (they do for those the catalog had when they were installed)."""
    if ctx.profile is None:
        return []
    guards = read_guards(ctx.conn, ctx.profile, ctx.settings.profile.key)
    if not guards.deferrable:
        return []
    rows = ctx.rows("installed_function_source", {"name": "on_identity_insert"})
    source = str(rows[0]["source"]) if rows else ""
    found = []
    for constraint in guards.deferrable:
        name = ctx.text(sql.Identifier(constraint.schema, constraint.name))
        what = "deferred constraint trigger" if constraint.kind == "t" else "deferrable constraint"
        mode = "initially deferred" if constraint.initially_deferred else "initially immediate"
        evidence = {"constraint": name, "kind": constraint.kind, "mode": mode}
        if constraint.on_key:
            found.append(
                Finding(
                    "deferrable_key",
                    "error",
                    f"{what} {name} on {ctx.settings.profile}({ctx.settings.profile.key}) is the "
                    "key profileguard finds existing profiles by: ON CONFLICT cannot use a "
                    "deferrable constraint, so every profile insert fails",
                    evidence,
                    ctx.text(
                        sql.SQL("alter table {} alter constraint {} not deferrable").format(
                            ctx.profile_sql, sql.Identifier(constraint.name)
                        )
                    ),
                )
            )
        elif ctx.installed is not None and name not in source:
            found.append(
                Finding(
                    "deferred_constraint_unchecked",
                    "error",
                    f"{what} {name} ({mode}) on {ctx.settings.profile} was added after install: "
                    "profileguard's functions do not check it, so a violation fails the sign-up "
                    "at COMMIT instead of being recorded",
                    evidence,
                    "profileguard install",
                )
            )
        else:
            found.append(
                Finding(
                    "deferred_constraint",
                    "info",
                    f"{what} {name} ({mode}) on {ctx.settings.profile}: profileguard checks it "
                    "right after each profile write (a violation is recorded or retried, the "
                    "sign-up commits), then sets it back to its declared mode — a caller's own "
                    "SET CONSTRAINTS mode for it is not kept across profileguard's writes",
                    evidence,
                )
            )
    return found

"""Checks of the tables themselves: do the identity and profile tables exist, is the profile
table's key a foreign key to the users."""

from __future__ import annotations

import re

from psycopg import sql

from profileguard.audit.report import Context, Finding
from profileguard.catalog import table_oid

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

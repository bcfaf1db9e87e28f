"""The profile table `install --create-profile-table` creates: its catalog facts before it
exists, its creation, grants and policies, the name of its foreign key."""

from __future__ import annotations

import psycopg
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.catalog import Column, TableFacts, inspect_table
from profileguard.config import Settings
from profileguard.errors import ConfigError
from profileguard.install.run import Recorder
from profileguard.install.templates import template
from profileguard.installation import table_parts


def role_exists(conn: psycopg.Connection, role: str) -> bool:
    row = conn.execute(sqlfiles.query("role_exists"), {"role": role}).fetchone()
    return bool(row and row[0])


def settings_table_parts(settings: Settings, key_type: str) -> dict[str, sql.Composable]:
    return table_parts(settings.identity, settings.profile, key_type)


def profile_table_facts(identity: TableFacts, settings: Settings) -> TableFacts:
    """What the catalog will say of the table profile_table.sql creates (install renders the
    functions before that table exists; a test checks this against the real table)."""
    key = identity.columns[settings.identity.key]

    def text(name: str) -> Column:
        return Column(name, "text", "S", False, False, False, None)

    def stamp(name: str) -> Column:
        return Column(name, "timestamp with time zone", "D", True, True, False, None, "now()")

    columns = [
        Column(settings.profile.key, key.type, key.category, True, False, False, key.max_length),
        text("username"),
        text("full_name"),
        text("avatar_url"),
        stamp("created_at"),
        stamp("updated_at"),
    ]
    return TableFacts(
        settings.profile,
        {c.name: c for c in columns},
        frozenset({settings.profile.key, "username"}),
        ("CHECK ((char_length(username) >= 3))",),
    )


def make_profile_table(
    rec: Recorder, settings: Settings, identity: TableFacts | None
) -> tuple[TableFacts, list[str]]:
    """Create the profile table (without its foreign key: see identity_phase)."""
    if identity is None or settings.identity.key not in identity.columns:
        raise ConfigError(
            f"identity table {settings.identity} (key {settings.identity.key}) does not exist",
            hint="set identity.table / identity.key to your users table before creating profiles",
        )
    facts = profile_table_facts(identity, settings)
    parts = settings_table_parts(settings, identity.columns[settings.identity.key].type)
    has_uid = rec.conn.execute("select to_regprocedure('auth.uid()') is not null").fetchone()
    policies = bool(has_uid and has_uid[0]) and role_exists(rec.conn, "authenticated")
    rec.run(template("profile_table.sql", **parts))
    _grant_profile_table(rec, parts["profile"])
    if policies:
        rec.run(template("profile_policies.sql", **parts))
        return facts, []
    return facts, [
        f"RLS is on for {settings.profile} with no policies (no auth.uid() or no role "
        "'authenticated' here): only its owner and roles with BYPASSRLS can read it"
    ]


PROFILE_GRANTS = "queries/profile_grants.sql"


def _grant_profile_table(rec: Recorder, profile: sql.Composable) -> None:
    """Explicit least-privilege grants on a profile table profileguard created (see the file)."""
    for role, text in sqlfiles.queries(PROFILE_GRANTS).items():
        if role == "public" or role_exists(rec.conn, role):
            rec.run(sql.SQL(text).format(profile=profile))


def profile_table_facts_or_error(conn: psycopg.Connection, settings: Settings) -> TableFacts:
    identity = inspect_table(conn, settings.identity)
    if identity is None or settings.identity.key not in identity.columns:
        raise ConfigError(
            f"identity table {settings.identity} (key {settings.identity.key}) does not exist",
            hint="set identity.table / identity.key to your users table before creating profiles",
        )
    return profile_table_facts(identity, settings)


def foreign_key_name(settings: Settings) -> str:
    """The name PostgreSQL gives an inline REFERENCES on the profile key."""
    return f"{settings.profile.name}_{settings.profile.key}_fkey"[:63]

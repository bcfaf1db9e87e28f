"""Security checks in the spirit of Supabase's linter (splinter), for what concerns profiles:
the identity table exposed to API roles, excess privileges on the profile table."""

from __future__ import annotations

from psycopg import sql

from profileguard.audit.report import Context, Finding
from profileguard.catalog import table_oid

# Schemas that Supabase or extensions own: their functions and tables are not the app's to fix.
EXCLUDED_SCHEMAS = (
    "_timescaledb_cache",
    "_timescaledb_catalog",
    "_timescaledb_config",
    "_timescaledb_internal",
    "auth",
    "cron",
    "extensions",
    "graphql",
    "graphql_public",
    "information_schema",
    "net",
    "pgmq",
    "pgroonga",
    "pgsodium",
    "pgsodium_masks",
    "pgtle",
    "pgbouncer",
    "pg_catalog",
    "realtime",
    "repack",
    "storage",
    "supabase_functions",
    "supabase_migrations",
    "tiger",
    "topology",
    "vault",
)


def _revoke_from(ctx: Context) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("public") if r == "public" else sql.Identifier(r) for r in ctx.roles
    )


def check_security(ctx: Context) -> list[Finding]:
    """Definer functions without search_path or callable by clients; RLS off; exposing views."""
    found = []
    excluded = list(EXCLUDED_SCHEMAS)
    for fn in ctx.rows("secdef_mutable_search_path", {"excluded": excluded}):
        found.append(
            Finding(
                "function_search_path_mutable",
                "warning",
                f"SECURITY DEFINER function {fn['function']} has no fixed search_path",
                {
                    "function": fn["function"],
                    "note": "qualify every table name in its body (e.g. public.profiles) first",
                },
                f"alter function {fn['function']} set search_path = pg_catalog, pg_temp;",
            )
        )
    for fn in ctx.rows("privileged_executable", {"excluded": excluded, "roles": ctx.roles}):
        found.append(
            Finding(
                "definer_function_executable",
                "warning" if fn["is_trigger"] else "error",
                f"SECURITY DEFINER function {fn['function']} is executable by "
                f"{', '.join(fn['grantees'])}",
                {
                    "function": fn["function"],
                    "grantees": fn["grantees"],
                    "trigger_function": fn["is_trigger"],
                },
                ctx.text(
                    sql.SQL("revoke execute on function {} from {};").format(
                        sql.SQL(fn["function"]), _revoke_from(ctx)
                    )
                ),
            )
        )
    for table in ctx.rows("rls_disabled", {"excluded": excluded, "roles": ctx.roles}):
        found.append(
            Finding(
                "rls_disabled",
                "error",
                f"RLS is off on {table['table_name']},"
                f" which {', '.join(table['grantees'])} can reach",
                {
                    "table": table["table_name"],
                    "grantees": table["grantees"],
                    "note": "with RLS on and no policy, clients see no rows; add policies for what "
                    "they may see",
                },
                ctx.text(
                    sql.SQL("alter table {} enable row level security;").format(
                        sql.SQL(table["table_name"])
                    )
                ),
            )
        )
    if ctx.identity is not None:
        for view in ctx.rows(
            "views_exposing_identity",
            {
                "oid": table_oid(ctx.conn, ctx.settings.identity),
                "roles": ctx.roles,
            },
        ):
            found.append(
                Finding(
                    "identity_exposed_by_view",
                    "error",
                    f"view {view['view_name']} exposes {ctx.settings.identity} to "
                    f"{', '.join(view['grantees'])}",
                    {"view": view["view_name"], "grantees": view["grantees"]},
                    ctx.text(
                        sql.SQL("revoke all on {} from {};").format(
                            sql.SQL(view["view_name"]), _revoke_from(ctx)
                        )
                    ),
                )
            )
    return found


# Privileges RLS does not govern (TRUNCATE empties the table, TRIGGER runs the grantee's code
# inside every write, REFERENCES and MAINTAIN lock it), and the row writes profileguard makes.
UNGOVERNED_PRIVILEGES = ("TRUNCATE", "TRIGGER", "REFERENCES", "MAINTAIN")


WRITE_PRIVILEGES = ("INSERT", "DELETE")


def check_profile_privileges(ctx: Context) -> list[Finding]:
    """API roles' excess privileges on the profile table, and triggers other roles put on it."""
    if ctx.profile is None:
        return []
    oid = table_oid(ctx.conn, ctx.settings.profile)
    found = []
    for grant in ctx.rows(
        "profile_table_grants",
        {
            "oid": oid,
            "roles": ctx.roles,
            "privileges": [*UNGOVERNED_PRIVILEGES, *WRITE_PRIVILEGES],
        },
    ):
        privileges: list[str] = list(grant["privileges"])
        ungoverned = [p for p in privileges if p in UNGOVERNED_PRIVILEGES]
        role = grant["grantee"]
        found.append(
            Finding(
                "profile_table_grants",
                "error" if ungoverned else "warning",
                f"{role} holds {', '.join(privileges)} on {ctx.settings.profile}",
                {
                    "table": str(ctx.settings.profile),
                    "grantee": role,
                    "privileges": privileges,
                    "note": "TRUNCATE, TRIGGER, REFERENCES and MAINTAIN are not limited by RLS "
                    "(TRUNCATE empties the table; a trigger runs inside profileguard's "
                    "SECURITY DEFINER writes); profileguard creates profiles, so clients "
                    "need neither INSERT nor DELETE",
                },
                ctx.text(
                    sql.SQL("revoke {} on table {} from {};").format(
                        sql.SQL(", ").join(sql.SQL(p.lower()) for p in privileges),
                        ctx.profile_sql,
                        sql.SQL("public") if role == "public" else sql.Identifier(role),
                    )
                ),
            )
        )
    found.extend(_username_updates(ctx, oid))
    for trig in ctx.rows("profile_foreign_triggers", {"oid": oid}):
        api_owned = trig["function_owner"] in ctx.roles
        found.append(
            Finding(
                "profile_table_foreign_trigger",
                "error" if api_owned or not trig["security_definer"] else "warning",
                f"trigger {trig['name']} on {ctx.settings.profile} runs {trig['function']}, "
                f"owned by {trig['function_owner']}",
                {
                    "table": str(ctx.settings.profile),
                    "trigger": trig["name"],
                    "function": trig["function"],
                    "function_owner": trig["function_owner"],
                    "security_definer": trig["security_definer"],
                    "note": "it runs inside every profile write, profileguard's SECURITY DEFINER "
                    "repairs included (with the installer's rights unless it is SECURITY "
                    "DEFINER itself); keep it only if you wrote it",
                },
                ctx.text(
                    sql.SQL("drop trigger {} on {};").format(
                        sql.Identifier(trig["name"]), ctx.profile_sql
                    )
                ),
            )
        )
    return found


def _username_updates(ctx: Context, oid: int | None) -> list[Finding]:
    """API roles granted UPDATE on the username column: a name they write skips the username
    policy (reserved names, cleaning, length)."""
    column = ctx.settings.username_column
    if oid is None or not column or ctx.profile is None or column not in ctx.profile.columns:
        return []
    found = []
    for grant in ctx.rows(
        "username_update_grants", {"oid": oid, "column": column, "roles": ctx.roles}
    ):
        role = grant["grantee"]
        found.append(
            Finding(
                "username_update_grant",
                "warning",
                f"{role} may update {ctx.settings.profile}.{column} directly",
                {
                    "table": str(ctx.settings.profile),
                    "column": column,
                    "grantee": role,
                    "note": "a username a client writes skips the username policy (reserved "
                    "names, invisible characters, length); users change theirs through the "
                    "app's server or their metadata",
                },
                ctx.text(
                    sql.SQL("revoke update ({}) on table {} from {};").format(
                        sql.Identifier(column),
                        ctx.profile_sql,
                        sql.SQL("public") if role == "public" else sql.Identifier(role),
                    )
                ),
            )
        )
    return found

"""`profileguard audit`: what is wrong with a database, before or after installing profileguard.

Read-only: one transaction, `set transaction read only`, rolled back. Each check is a small
function returning Findings; each Finding carries its evidence and the exact SQL or profileguard
command that fixes it (several steps are separate lines). The security checks follow the spirit
of Supabase's linter (splinter) for what concerns user profiles.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.catalog import TableFacts, inspect_table, table_oid
from profileguard.config import Settings, Source, TableRef
from profileguard.db import connect, translate
from profileguard.errors import ConfigError
from profileguard.install import pending_migrations, trigger_statement
from profileguard.install.takeover import MARKER
from profileguard.installation import (
    TRIGGER_NAME,
    UPDATE_TRIGGER_NAMES,
    Installation,
    schema_version,
    table_sql,
)
from profileguard.mapping import Plan, build_plan, source_expr

SEVERITIES = ("error", "warning", "info")
AUDIT_SQL = "audit.sql"
# A worker whose last heartbeat is older than this is considered gone (it beats every 10 s).
WORKER_ALIVE_SECONDS = 120
# Schemas that Supabase or extensions own: their functions and tables are not the app's to fix.
EXCLUDED_SCHEMAS = (
    "_timescaledb_cache", "_timescaledb_catalog", "_timescaledb_config",
    "_timescaledb_internal", "auth", "cron", "extensions", "graphql", "graphql_public",
    "information_schema", "net", "pgmq", "pgroonga", "pgsodium", "pgsodium_masks", "pgtle",
    "pgbouncer", "pg_catalog", "realtime", "repack", "storage", "supabase_functions",
    "supabase_migrations", "tiger", "topology", "vault",
)
# How long each step of the foreign key fix may wait for a lock (the users table is busy).
FK_FIX_LOCK_TIMEOUT = "3s"
EXCEPTION_HANDLER = re.compile(r"\bexception\s+when\b", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """One problem (or fact) the audit found: how bad, why we think so, how to fix it."""

    code: str
    severity: str
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "evidence": self.evidence,
            "fix": self.fix,
        }


@dataclass
class AuditReport:
    """Every finding, most severe first, and a summary of profileguard's own state."""

    findings: list[Finding]
    state: dict[str, Any]

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def has_errors(self) -> bool:
        return self.count("error") > 0

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": {s: self.count(s) for s in SEVERITIES},
            "state": self.state,
            "findings": [f.as_dict() for f in self.findings],
        }


@dataclass
class Context:
    """What every check may look at; gathered once per audit."""

    conn: psycopg.Connection
    settings: Settings
    identity: TableFacts | None
    profile: TableFacts | None
    version: int
    installed: Installation | None
    roles: list[str]
    state: dict[str, Any] = field(default_factory=dict)
    _plan: Plan | ConfigError | None = None

    @property
    def identity_sql(self) -> sql.Identifier:
        return table_sql(self.settings.identity)

    @property
    def profile_sql(self) -> sql.Identifier:
        return table_sql(self.settings.profile)

    def text(self, composable: sql.Composable) -> str:
        return composable.as_string(self.conn)

    def rows(self, name: str, params: dict[str, Any] | None = None,
             parts: dict[str, sql.Composable] | None = None) -> list[dict[str, Any]]:
        """Run the named query of audit.sql; {x} parts are composed identifiers."""
        query = sql.SQL(sqlfiles.query(name, AUDIT_SQL)).format(**(parts or {}))
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, params if params is not None else {}).fetchall()

    def plan(self) -> Plan | ConfigError:
        if self._plan is None:
            try:
                self._plan = build_plan(self.conn, self.settings)
            except ConfigError as exc:
                self._plan = exc
        return self._plan

    @property
    def enabled(self) -> bool:
        return bool(self.installed and self.installed.enabled)


Check = Callable[[Context], list[Finding]]




# ------------------------------------------------------------------------------------ checks


def check_tables(ctx: Context) -> list[Finding]:
    """The identity and profile tables exist."""
    found = []
    if ctx.identity is None or ctx.settings.identity.key not in ctx.identity.columns:
        found.append(Finding(
            "identity_table_missing", "error",
            f"identity table {ctx.settings.identity} (key {ctx.settings.identity.key}) "
            "does not exist",
            {"identity_table": str(ctx.settings.identity)},
            "set identity.table and identity.key in profileguard.toml to your users table",
        ))
    elif ctx.profile is None:
        found.append(Finding(
            "profile_table_missing", "error",
            f"profile table {ctx.settings.profile} does not exist",
            {"profile_table": str(ctx.settings.profile)},
            "profileguard install --create-profile-table",
        ))
    return found


def check_state(ctx: Context) -> list[Finding]:
    """profileguard's own state: installed version, flags, trigger, pending migrations, worker."""
    if ctx.installed is None:
        return [Finding(
            "not_installed", "info", "profileguard is not installed in this database",
            {"latest_schema_version": sqlfiles.latest_version()},
            "profileguard install --disabled",
        )]
    found = []
    pending = [m.version for m in pending_migrations(ctx.conn)]
    if pending:
        found.append(Finding(
            "upgrade_available", "warning",
            f"schema version {ctx.version} installed; migrations {pending} are pending",
            {"installed_version": ctx.version, "pending": pending},
            "profileguard upgrade",
        ))
    if not ctx.installed.enabled:
        found.append(Finding(
            "disabled", "warning",
            "profileguard is installed but disabled: new signups get no profile from it",
            {"enabled": False}, "profileguard enable",
        ))
    if ctx.installed.strict:
        found.append(Finding(
            "strict_mode", "info",
            "strict mode is on: a profile failure fails the signup",
            {"strict": True}, "profileguard install",
        ))
    if ctx.identity is not None:
        oid = table_oid(ctx.conn, ctx.settings.identity)
        with ctx.conn.cursor(row_factory=dict_row) as cur:
            trigger = cur.execute(
                sqlfiles.query("identity_trigger"), {"oid": oid, "name": TRIGGER_NAME}
            ).fetchone()
        if trigger is None:
            found.append(Finding(
                "trigger_missing", "error",
                f"profileguard's trigger on {ctx.settings.identity} is missing "
                "(schema diff tools often drop triggers on auth tables)",
                {"trigger": TRIGGER_NAME}, "profileguard install",
            ))
        elif trigger["mode"] == "D":
            found.append(Finding(
                "trigger_disabled", "error",
                f"profileguard's trigger on {ctx.settings.identity} is disabled at table level",
                {"trigger": TRIGGER_NAME},
                # CREATE OR REPLACE re-enables it and needs only the TRIGGER privilege
                # (ALTER TABLE … ENABLE TRIGGER needs the table's owner).
                ctx.text(sql.SQL("{};").format(trigger_statement(ctx.settings))),
            ))
    if ctx.conn.execute("select to_regclass('profileguard.workers')").fetchone() != (None,):
        workers = ctx.rows("workers", {"alive_seconds": WORKER_ALIVE_SECONDS})[0]
        ctx.state.update(workers=workers["workers"], workers_alive=workers["alive"],
                         last_heartbeat=_iso(workers["last_heartbeat"]))
        if workers["workers"] == 0:
            found.append(Finding(
                "no_worker", "info",
                "no reconciler worker has run: profiles missed by the trigger are not repaired",
                {"workers": 0}, "profileguard worker",
            ))
        elif workers["alive"] == 0:
            found.append(Finding(
                "worker_down", "warning",
                f"no reconciler worker has sent a heartbeat in {WORKER_ALIVE_SECONDS} s",
                {"workers": workers["workers"],
                 "last_heartbeat": _iso(workers["last_heartbeat"])},
                "profileguard worker",
            ))
    return found


def _writes_pattern(ref: TableRef) -> str:
    """A regular expression matching an INSERT/UPDATE/MERGE of `ref`, qualified or not."""
    name = ref.name.replace("$", r"\$")
    schema_name = ref.schema.replace("$", r"\$")
    return (
        r"(insert\s+into|update|merge\s+into)\s+(only\s+)?"
        rf'("?{schema_name}"?\s*\.\s*)?"?{name}"?([^a-z0-9_$]|$)'
    )


def check_competing_triggers(ctx: Context) -> list[Finding]:
    """Other triggers on the identity table, and those of them that write the profile table."""
    if ctx.identity is None:
        return []
    oid = table_oid(ctx.conn, ctx.settings.identity)
    writes = re.compile(_writes_pattern(ctx.settings.profile), re.IGNORECASE)
    qualified = re.compile(
        rf'"?{re.escape(ctx.settings.profile.schema)}"?\s*\.\s*"?{re.escape(ctx.settings.profile.name)}',
        re.IGNORECASE,
    )
    found: list[Finding] = []
    others = []
    for trig in ctx.rows("identity_triggers", {"oid": oid}):
        if trig["name"] == TRIGGER_NAME or trig["name"] in UPDATE_TRIGGER_NAMES:
            continue
        if MARKER in trig["source"]:
            found.append(Finding(
                "replaced_trigger", "info",
                f"trigger {trig['name']} was taken over: its function {trig['function']} is a "
                "no-op (profileguard uninstall restores it)",
                {"trigger": trig["name"], "function": trig["function"]},
            ))
            continue
        if not writes.search(trig["source"]):
            others.append({"trigger": trig["name"], "function": trig["function"],
                           "enabled": trig["mode"] != "D"})
            continue
        evidence = {
            "trigger": trig["name"],
            "function": trig["function"],
            "security_definer": trig["security_definer"],
            "fixed_search_path": trig["fixed_search_path"],
            "for_each_row": trig["for_each_row"],
            "on_update": trig["on_update"],
            "handles_errors": bool(EXCEPTION_HANDLER.search(trig["source"])),
        }
        if trig["mode"] == "D" or trig["never_fires"]:
            found.append(Finding(
                "replaced_trigger", "info",
                f"trigger {trig['name']} writes {ctx.settings.profile} and is "
                + ("disabled" if trig["mode"] == "D"
                   else "re-created WHEN (false): it never fires"),
                evidence,
            ))
            continue
        risks = []
        if ctx.enabled:
            risks.append("profileguard is enabled too: two paths create the same profile")
        if not trig["security_definer"]:
            risks.append("not SECURITY DEFINER: the auth role may lack rights (42501)")
        if not trig["fixed_search_path"] and not qualified.search(trig["source"]):
            risks.append("unqualified table name without a fixed search_path (42P01)")
        if trig["on_update"]:
            risks.append("also fires on UPDATE: can fail logins")
        if not evidence["handles_errors"]:
            evidence["note"] = (
                "any error in it aborts the signup ('Database error saving new user')"
            )
        evidence["risks"] = risks
        found.append(Finding(
            "competing_trigger", "error" if risks else "warning",
            f"trigger {trig['name']} on {ctx.settings.identity} also creates profiles",
            evidence,
            f"profileguard install --replace-trigger {shlex.quote(trig['name'])}",
        ))
    if others:
        found.append(Finding(
            "identity_triggers", "info",
            f"other triggers on {ctx.settings.identity} (they do not write profiles)",
            {"triggers": others},
        ))
    trigger_functions = {str(f.evidence["function"]) for f in found if "function" in f.evidence}
    writers = [
        w for w in ctx.rows("profile_writers", {"pattern": _writes_pattern(ctx.settings.profile)})
        if w["function"] not in trigger_functions
    ]
    if writers:
        found.append(Finding(
            "profile_writers", "info",
            f"other functions that write {ctx.settings.profile}",
            {"functions": [w["function"] for w in writers]},
        ))
    return found


def _backfill_sql(ctx: Context) -> str:
    s = ctx.settings
    return ctx.text(sql.SQL(
        "select profileguard.create_profiles(array(select u.{ik} from {identity} u "
        "where not exists (select from {profile} p where p.{pk} = u.{ik})), 'audit');"
    ).format(
        ik=sql.Identifier(s.identity.key), identity=ctx.identity_sql,
        profile=ctx.profile_sql, pk=sql.Identifier(s.profile.key),
    ))


def check_missing_profiles(ctx: Context) -> list[Finding]:
    """Users without a profile (count, oldest, sample), and profiles without a user."""
    if ctx.identity is None or ctx.profile is None:
        return []
    s = ctx.settings
    if s.profile.key not in ctx.profile.columns:
        return []
    parts: dict[str, sql.Composable] = {
        "identity": ctx.identity_sql, "profile": ctx.profile_sql,
        "identity_key": sql.Identifier(s.identity.key),
        "profile_key": sql.Identifier(s.profile.key),
    }
    created = ctx.identity.columns.get("created_at")
    parts["created_at"] = (
        sql.SQL("u.created_at") if created is not None and "timestamp" in created.type
        else sql.SQL("null::timestamptz")
    )
    found = []
    missing = ctx.rows("missing_profiles", parts=parts)[0]
    ctx.state["missing_profiles"] = missing["missing"]
    if missing["missing"]:
        steps = [] if ctx.installed else ["profileguard install --disabled"]
        steps.append(_backfill_sql(ctx))
        found.append(Finding(
            "missing_profiles", "error",
            f"{missing['missing']} user(s) have no profile",
            {"count": missing["missing"], "oldest": _iso(missing["oldest"]),
             "sample": missing["sample"],
             "note": "for many users, `profileguard backfill` creates them in bounded batches"},
            "\n".join(steps),
        ))
    orphans = ctx.rows("orphan_profiles", parts=parts)[0]
    if orphans["orphans"]:
        found.append(Finding(
            "orphan_profiles", "warning",
            f"{orphans['orphans']} profile(s) belong to no user",
            {"count": orphans["orphans"], "sample": orphans["sample"],
             "note": "profileguard prune --dry-run lists them all; profileguard prune removes "
                     "them (recorded)" if ctx.installed else
                     "after profileguard install, profileguard prune --dry-run lists them"},
            "profileguard prune --dry-run\nprofileguard prune" if ctx.installed else
            ctx.text(sql.SQL(
                "delete from {profile} p where not exists "
                "(select from {identity} u where u.{ik} = p.{pk});"
            ).format(profile=ctx.profile_sql, identity=ctx.identity_sql,
                     ik=sql.Identifier(s.identity.key), pk=sql.Identifier(s.profile.key))),
        ))
    return found


def _value_expr(sources: tuple[Source, ...]) -> sql.Composable:
    parts = [source_expr(src) for src in sources]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(parts))


def check_mapping(ctx: Context) -> list[Finding]:
    """Profile columns the mapping cannot fill, and constraints derived values may break."""
    if ctx.identity is None or ctx.profile is None:
        return []
    plan = ctx.plan()
    if isinstance(plan, ConfigError):
        return [Finding("mapping_invalid", "error", plan.message, {}, plan.hint)]
    found = []
    s = ctx.settings
    for column in ctx.profile.columns.values():
        if (column.name == s.profile.key or column.name in plan.mapping or not column.not_null
                or column.has_default):
            continue
        found.append(Finding(
            "not_null_unfilled", "error",
            f"{s.profile}.{column.name} is NOT NULL without a default and the mapping does not "
            "fill it: every profile insert fails",
            {"column": column.name, "type": column.type,
             "other_fixes": f"give it a default, or map a source to it (mapping.{column.name})"},
            ctx.text(sql.SQL("alter table {} alter column {} drop not null;").format(
                ctx.profile_sql, sql.Identifier(column.name))),
        ))
    oid = table_oid(ctx.conn, s.profile)
    for column_name, sources in plan.mapping.items():
        if plan.guard is not None and column_name == plan.guard.column:
            continue
        column = ctx.profile.columns[column_name]
        low, high = ctx.profile.length_bounds(column_name)
        unique = column_name in ctx.profile.unique
        if not unique and low is None and high is None:
            continue
        constraints = [
            c for c in ctx.rows("column_constraints", {"oid": oid, "column": column_name})
            if c["kind"] == "u" or re.search(r"length\(", c["definition"])
        ]
        value = _value_expr(sources)
        counts = ctx.rows(
            "derived_violations",
            {"max_length": high, "min_length": low, "unique": unique},
            {"identity": ctx.identity_sql, "profile": ctx.profile_sql,
             "identity_key": sql.Identifier(s.identity.key),
             "profile_key": sql.Identifier(s.profile.key),
             "column": sql.Identifier(column_name), "value": value},
        )[0]
        actions: list[sql.Composable] = [
            sql.SQL("drop constraint {}").format(sql.Identifier(c["name"])) for c in constraints
        ]
        if column.max_length is not None:
            actions.append(sql.SQL("alter column {} type text").format(sql.Identifier(column_name)))
        fix = None
        if actions:
            fix = ctx.text(sql.SQL("alter table {} {};").format(
                ctx.profile_sql, sql.SQL(", ").join(actions)))
        found.append(Finding(
            "derived_value_at_risk", "warning",
            f"{s.profile}.{column_name} is derived from user data but is "
            + " and ".join(x for x in ("unique" if unique else "",
                                       "length-bounded" if low or high else "") if x)
            + ": a value that does not fit fails the profile insert",
            {"column": column_name, "sources": [str(x) for x in sources],
             "min_length": low, "max_length": high, "unique": unique,
             "users_without_profile_now_failing": {
                 "too_long": counts["too_long"], "too_short": counts["too_short"],
                 "duplicate": counts["duplicate"]},
             "other_fixes": f"set username_column = '{column_name}' in profileguard.toml to "
                            "derive unique, length-fitted values"},
            fix,
        ))
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
            r"(REFERENCES\s+\S+\([^)]*\)(?:\s+MATCH\s+\w+)?)", r"\1 ON DELETE CASCADE",
            definition, count=1,
        )
        table = sql.SQL(fk["table_name"])
        name = sql.Identifier(fk["name"])
        # NOT VALID: the new constraint is checked only for new rows, so the first step holds
        # its locks (on the profile table and, briefly, the users table that every login
        # updates) for an instant; VALIDATE then checks existing rows under a lock that lets
        # reads and writes go on. Each step gives up instead of queueing behind a long lock.
        steps = [
            sql.SQL("set lock_timeout = {}; alter table {} drop constraint {}, add constraint {} "
                    "{} not valid;").format(sql.Literal(FK_FIX_LOCK_TIMEOUT), table, name, name,
                                            sql.SQL(definition)),
            sql.SQL("set lock_timeout = {}; alter table {} validate constraint {};").format(
                sql.Literal(FK_FIX_LOCK_TIMEOUT), table, name),
        ]
        found.append(Finding(
            "fk_blocks_user_deletion", "warning",
            f"foreign key {fk['name']} on {fk['table_name']} blocks deleting users "
            "(no ON DELETE CASCADE)",
            {"table": fk["table_name"], "constraint": fk["name"], "definition": fk["definition"],
             "note": "run the steps in order; if one times out on a lock, run it again"},
            "\n".join(ctx.text(step) for step in steps),
        ))
    return found


def _revoke_from(ctx: Context) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("public") if r == "public" else sql.Identifier(r) for r in ctx.roles
    )


def check_security(ctx: Context) -> list[Finding]:
    """Definer functions without search_path or callable by clients; RLS off; exposing views."""
    found = []
    excluded = list(EXCLUDED_SCHEMAS)
    for fn in ctx.rows("secdef_mutable_search_path", {"excluded": excluded}):
        found.append(Finding(
            "function_search_path_mutable", "warning",
            f"SECURITY DEFINER function {fn['function']} has no fixed search_path",
            {"function": fn["function"],
             "note": "qualify every table name in its body (e.g. public.profiles) first"},
            f"alter function {fn['function']} set search_path = '';",
        ))
    for fn in ctx.rows("privileged_executable", {"excluded": excluded, "roles": ctx.roles}):
        found.append(Finding(
            "definer_function_executable", "warning" if fn["is_trigger"] else "error",
            f"SECURITY DEFINER function {fn['function']} is executable by "
            f"{', '.join(fn['grantees'])}",
            {"function": fn["function"], "grantees": fn["grantees"],
             "trigger_function": fn["is_trigger"]},
            ctx.text(sql.SQL("revoke execute on function {} from {};").format(
                sql.SQL(fn["function"]), _revoke_from(ctx))),
        ))
    for table in ctx.rows("rls_disabled", {"excluded": excluded, "roles": ctx.roles}):
        found.append(Finding(
            "rls_disabled", "error",
            f"RLS is off on {table['table_name']}, which {', '.join(table['grantees'])} can reach",
            {"table": table["table_name"], "grantees": table["grantees"],
             "note": "with RLS on and no policy, clients see no rows; add policies for what "
                     "they may see"},
            ctx.text(sql.SQL("alter table {} enable row level security;").format(
                sql.SQL(table["table_name"]))),
        ))
    if ctx.identity is not None:
        for view in ctx.rows("views_exposing_identity", {
            "oid": table_oid(ctx.conn, ctx.settings.identity), "roles": ctx.roles,
        }):
            found.append(Finding(
                "identity_exposed_by_view", "error",
                f"view {view['view_name']} exposes {ctx.settings.identity} to "
                f"{', '.join(view['grantees'])}",
                {"view": view["view_name"], "grantees": view["grantees"]},
                ctx.text(sql.SQL("revoke all on {} from {};").format(
                    sql.SQL(view["view_name"]), _revoke_from(ctx))),
            ))
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
    for grant in ctx.rows("profile_table_grants", {
        "oid": oid, "roles": ctx.roles,
        "privileges": [*UNGOVERNED_PRIVILEGES, *WRITE_PRIVILEGES],
    }):
        privileges: list[str] = list(grant["privileges"])
        ungoverned = [p for p in privileges if p in UNGOVERNED_PRIVILEGES]
        role = grant["grantee"]
        found.append(Finding(
            "profile_table_grants", "error" if ungoverned else "warning",
            f"{role} holds {', '.join(privileges)} on {ctx.settings.profile}",
            {"table": str(ctx.settings.profile), "grantee": role, "privileges": privileges,
             "note": "TRUNCATE, TRIGGER, REFERENCES and MAINTAIN are not limited by RLS "
                     "(TRUNCATE empties the table; a trigger runs inside profileguard's "
                     "SECURITY DEFINER writes); profileguard creates profiles, so clients "
                     "need neither INSERT nor DELETE"},
            ctx.text(sql.SQL("revoke {} on table {} from {};").format(
                sql.SQL(", ").join(sql.SQL(p.lower()) for p in privileges),
                ctx.profile_sql,
                sql.SQL("public") if role == "public" else sql.Identifier(role))),
        ))
    for trig in ctx.rows("profile_foreign_triggers", {"oid": oid}):
        api_owned = trig["function_owner"] in ctx.roles
        found.append(Finding(
            "profile_table_foreign_trigger",
            "error" if api_owned or not trig["security_definer"] else "warning",
            f"trigger {trig['name']} on {ctx.settings.profile} runs {trig['function']}, "
            f"owned by {trig['function_owner']}",
            {"table": str(ctx.settings.profile), "trigger": trig["name"],
             "function": trig["function"], "function_owner": trig["function_owner"],
             "security_definer": trig["security_definer"],
             "note": "it runs inside every profile write, profileguard's SECURITY DEFINER "
                     "repairs included (with the installer's rights unless it is SECURITY "
                     "DEFINER itself); keep it only if you wrote it"},
            ctx.text(sql.SQL("drop trigger {} on {};").format(
                sql.Identifier(trig["name"]), ctx.profile_sql)),
        ))
    return found


CHECKS: tuple[Check, ...] = (
    check_tables,
    check_state,
    check_competing_triggers,
    check_missing_profiles,
    check_mapping,
    check_foreign_keys,
    check_security,
    check_profile_privileges,
)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def audit_connection(conn: psycopg.Connection, settings: Settings) -> AuditReport:
    """Run every check on `conn` (inside the caller's read-only transaction)."""
    conn.execute("set local search_path = ''")
    installed = Installation.read(conn)
    version = installed.version if installed else schema_version(conn)
    if installed is not None:  # the installed tables win over the configuration
        settings = settings.with_overrides(identity=installed.identity, profile=installed.profile)
    row = conn.execute(sqlfiles.query("client_roles", AUDIT_SQL)).fetchone()
    roles: list[str] = list(row[0]) if row else ["public"]
    ctx = Context(
        conn, settings,
        identity=inspect_table(conn, settings.identity),
        profile=inspect_table(conn, settings.profile),
        version=version, installed=installed, roles=roles,
    )
    ctx.state.update(
        installed=installed is not None,
        schema_version=version,
        latest_schema_version=sqlfiles.latest_version(),
        enabled=None if installed is None else installed.enabled,
        strict=None if installed is None else installed.strict,
        identity_table=str(settings.identity),
        profile_table=str(settings.profile),
    )
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(ctx))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return AuditReport(findings, ctx.state)


def run_audit(settings: Settings) -> AuditReport:
    """Audit the configured database in one read-only transaction that is rolled back."""
    conn = connect(settings)
    try:
        conn.execute("set transaction read only")
        return audit_connection(conn, settings)
    except psycopg.Error as exc:
        raise translate(exc, context="audit") from exc
    finally:
        conn.rollback()
        conn.close()

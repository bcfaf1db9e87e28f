"""Install, upgrade, uninstall, enable/disable and describe profileguard in a database.

Every change runs in one transaction under an advisory lock, so two installs never interleave and
a failed install leaves nothing behind. Installing again with the same settings changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import __version__, preflight
from profileguard import sql as sqlfiles
from profileguard.catalog import inspect_table, table_oid
from profileguard.config import Settings, TableRef
from profileguard.db import connect, translate
from profileguard.errors import ConfigError
from profileguard.installation import (
    TRIGGER_NAME,
    Installation,
    key_type_of,
    require_version,
    schema_present,
    schema_version,
    table_parts,
)
from profileguard.mapping import (
    Plan,
    build_plan,
    build_sync,
    drift_select,
    insert_statement,
    redact_statement,
    sync_statement,
    when_changed,
)
from profileguard.preflight import Preflight

INSTALL_LOCK = "profileguard.install"
# Seed of hashtextextended() for the per-user claim locks that keep repairs by the worker and the
# in-database sweep apart (and apart from other advisory locks).
CLAIM_SEED = 0x70726F66
# The pg_cron job of `install --schedule pg_cron`: a bounded sweep, removed by uninstall.
CRON_JOB = "profileguard-reconcile"
CRON_MAX_ROWS = 10_000
CRON_SCHEDULE = re.compile(r"(\S+\s+){4}\S+|[1-9][0-9]? seconds")
TRANSITION_TABLE = "pg_new_users"
# The signup trigger's wait for a lock while it records a failure (at most its lock_timeout_ms):
# a signup whose profile table and events table are both locked waits about lock_timeout_ms plus
# this, then commits.
RECORD_LOCK_MS = 50
# The UPDATE trigger's queue of changed users (a transaction-local setting) holds up to this many
# characters (about 2,000 UUIDs) before a statement's changes are synced in one pass over all.
SYNC_QUEUE_CHARS = 74_000


@dataclass
class InstallResult:
    """What an install or upgrade did."""

    version_before: int
    version_after: int
    created_profile_table: bool = False
    changed: bool = False
    statements: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    replaced_triggers: list[str] = field(default_factory=list)
    preflight: Preflight | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "preflight": None if self.preflight is None else self.preflight.as_dict(),
            "version_before": self.version_before,
            "version_after": self.version_after,
            "created_profile_table": self.created_profile_table,
            "changed": self.changed,
            "notes": self.notes,
            "replaced_triggers": self.replaced_triggers,
        }


class _Recorder:
    """Runs SQL on a connection and keeps the text of every statement (for --print-sql)."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.statements: list[str] = []

    def run(self, statement: str | sql.Composable, params: dict[str, Any] | None = None) -> None:
        text = statement if isinstance(statement, str) else statement.as_string(self.conn)
        self.statements.append(text.strip())
        self.conn.execute(text, params)


def _template(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(sqlfiles.read(name)).format(**parts)


def render_generated(plan: Plan) -> sql.Composed:
    """The mapping-dependent functions and the trigger, as one SQL script."""
    settings = plan.settings
    parts = table_parts(settings.identity, settings.profile, plan.key_type)
    ikey = sql.Identifier(settings.identity.key)
    new_rows = sql.Identifier(TRANSITION_TABLE)
    identity = parts["identity"]
    by_ids = sql.SQL("where u.{} = any(p_ids)").format(ikey)
    # The backfill's key range: users in [p_first, p_last] without a profile. The anti-join
    # repeats the range on the profile side so it reads only that range, never all profiles.
    by_range = sql.SQL(
        "where u.{ikey} >= p_first and u.{ikey} <= p_last"
        " and not exists (select from {profile} p where p.{pkey} = u.{ikey}"
        " and p.{pkey} >= p_first and p.{pkey} <= p_last)"
    ).format(ikey=ikey, profile=parts["profile"], pkey=parts["profile_key"])
    # The backfill's page range [v_from, v_to) (a TID range scan). The sweep leaves existing
    # profiles to ON CONFLICT (the same one index probe a new row costs anyway); the catch-up
    # takes only the rows written since the sweep began (age(xmin) <= v_since; frozen rows are
    # the oldest) and, as nearly all of those have a profile, skips them with NOT EXISTS first.
    by_pages = sql.SQL("where u.ctid >= v_from and u.ctid < v_to")
    by_pages_since = sql.SQL(
        "where u.ctid >= v_from and u.ctid < v_to and pg_catalog.age(u.xmin) <= v_since"
        " and not exists (select from {profile} p where p.{pkey} = u.{ikey})"
    ).format(ikey=ikey, profile=parts["profile"], pkey=parts["profile_key"])
    return _template(
        "generated.sql",
        **parts,
        identity_text=sql.Literal(str(settings.identity)),
        identity_key_text=sql.Literal(settings.identity.key),
        guard=sql.SQL("true" if plan.guard else "false"),
        lock_timeout=sql.Literal(f"{settings.lock_timeout_ms}ms"),
        record_lock_timeout=sql.Literal(f"{min(settings.lock_timeout_ms, RECORD_LOCK_MS)}ms"),
        insert_new=insert_statement(plan, source=new_rows, optimistic=True),
        insert_new_forced=insert_statement(plan, source=new_rows, force_suffix=True),
        insert_ids=insert_statement(plan, source=identity, where=by_ids),
        insert_ids_forced=insert_statement(plan, source=identity, where=by_ids, force_suffix=True),
        claim_seed=sql.Literal(CLAIM_SEED),
        insert_range=insert_statement(plan, source=identity, where=by_range),
        insert_range_forced=insert_statement(
            plan, source=identity, where=by_range, force_suffix=True
        ),
        insert_pages=insert_statement(plan, source=identity, where=by_pages),
        insert_pages_forced=insert_statement(
            plan, source=identity, where=by_pages, force_suffix=True
        ),
        insert_pages_since=insert_statement(plan, source=identity, where=by_pages_since),
        insert_pages_since_forced=insert_statement(
            plan, source=identity, where=by_pages_since, force_suffix=True
        ),
    )


def render_sync(plan: Plan) -> sql.Composed:
    """The UPDATE triggers, the set-based sync and the drift finder (sync.sql) for the
    configured update policies and redacted columns."""
    settings = plan.settings
    sync = build_sync(plan)
    parts = table_parts(settings.identity, settings.profile, plan.key_type)
    ikey = sql.Identifier(settings.identity.key)
    nothing = sql.SQL("select null::{} as {} where false").format(
        sql.SQL(plan.key_type), parts["profile_key"]
    )
    by_ids = sql.SQL("where u.{} = any(p_ids)").format(ikey)
    plain_key = plan.key_type in ("uuid", "smallint", "integer", "bigint")
    new_key = sql.SQL("new.{}::text").format(ikey)
    by_range = sql.SQL(
        "where (p_after is null or u.{k} > p_after) and u.{k} <= v_last"
    ).format(k=ikey)
    watched = sync.watched or (settings.identity.key,)
    return _template(
        "sync.sql",
        **parts,
        lock_timeout=sql.Literal(f"{settings.lock_timeout_ms}ms"),
        record_lock_timeout=sql.Literal(f"{min(settings.lock_timeout_ms, RECORD_LOCK_MS)}ms"),
        sync_ids=sync_statement(plan, sync, by_ids, sql.SQL(
            "(p_own_tx and profileguard.written_in_this_transaction(p.xmin))"
        )) or nothing,
        redact_ids=redact_statement(plan, sync, by_ids) or nothing,
        # One pass over all (a statement past the queue): no per-row transaction check.
        sync_all=sync_statement(plan, sync, sql.SQL("")) or nothing,
        redact_all=redact_statement(plan, sync, sql.SQL("")) or nothing,
        queue_chars=sql.Literal(SYNC_QUEUE_CHARS),
        # An array literal element: keys of other types are quoted (they may hold commas).
        queued_key=new_key if plain_key else sql.SQL(
            "'\"' || pg_catalog.replace(pg_catalog.replace({}, '\\', '\\\\'), '\"',"
            " '\\\"') || '\"'"
        ).format(new_key),
        drift_ids=drift_select(plan, sync, by_ids),
        drift_range=drift_select(plan, sync, by_range),
        watched=sql.SQL(", ").join(sql.Identifier(c) for c in watched),
        when_changed=when_changed(sync),
    )


def applied_versions(conn: psycopg.Connection) -> set[int]:
    """The migration versions recorded in the database (empty when not installed)."""
    if not schema_present(conn):
        return set()
    return {int(row[0]) for row in conn.execute(sqlfiles.query("applied_versions"))}


def pending_migrations(conn: psycopg.Connection) -> list[sqlfiles.Migration]:
    """The migrations of this package that the database has not recorded, in order."""
    applied = applied_versions(conn)
    return [m for m in sqlfiles.migrations() if m.version not in applied]


def _role_exists(conn: psycopg.Connection, role: str) -> bool:
    row = conn.execute(sqlfiles.query("role_exists"), {"role": role}).fetchone()
    return bool(row and row[0])


def _create_profile_table(rec: _Recorder, settings: Settings) -> list[str]:
    key_type = key_type_of(rec.conn, settings.identity)
    if key_type is None:
        raise ConfigError(
            f"identity table {settings.identity} (key {settings.identity.key}) does not exist",
            hint="set identity.table / identity.key to your users table before creating profiles",
        )
    parts = table_parts(settings.identity, settings.profile, key_type)
    rec.run(_template("profile_table.sql", **parts))
    _grant_profile_table(rec, parts["profile"])
    has_uid = rec.conn.execute("select to_regprocedure('auth.uid()') is not null").fetchone()
    if has_uid and has_uid[0] and _role_exists(rec.conn, "authenticated"):
        rec.run(_template("profile_policies.sql", **parts))
        return []
    return [
        f"RLS is on for {settings.profile} with no policies (no auth.uid() or no role "
        "'authenticated' here): only its owner and roles with BYPASSRLS can read it"
    ]


PROFILE_GRANTS = "profile_grants.sql"


def _grant_profile_table(rec: _Recorder, profile: sql.Composable) -> None:
    """Explicit least-privilege grants on a profile table profileguard created (see the file)."""
    for role, text in sqlfiles.queries(PROFILE_GRANTS).items():
        if role == "public" or _role_exists(rec.conn, role):
            rec.run(sql.SQL(text).format(profile=profile))


_ENABLE_MODE = {"O": "enable trigger", "A": "enable always trigger", "R": "enable replica trigger"}


def _replace_trigger(rec: _Recorder, settings: Settings, name: str, result: InstallResult) -> None:
    """Disable the identity table's trigger `name` and record it, so uninstall can restore it.

    Two paths creating profiles for the same signup race (and either can abort the signup);
    after this only profileguard's trigger creates them.
    """
    oid = table_oid(rec.conn, settings.identity)
    with rec.conn.cursor(row_factory=dict_row) as cur:
        trigger = cur.execute(
            sqlfiles.query("identity_trigger"), {"oid": oid, "name": name}
        ).fetchone()
    if trigger is None or trigger["internal"] or name == TRIGGER_NAME:
        raise ConfigError(
            f"--replace-trigger: {settings.identity} has no trigger {name!r} to replace",
            hint="run: profileguard audit (it lists the triggers on the identity table)",
        )
    if trigger["mode"] == "D":
        result.notes.append(f"trigger {name} on {settings.identity} is already disabled")
        return
    identity = sql.Identifier(settings.identity.schema, settings.identity.name)
    rec.run(sql.SQL("alter table {} disable trigger {}").format(identity, sql.Identifier(name)))
    rec.run(
        sqlfiles.query("record_replaced_trigger"),
        {"t": str(settings.identity), "n": name, "f": trigger["function"], "m": trigger["mode"]},
    )
    result.replaced_triggers.append(name)
    result.notes.append(
        f"disabled trigger {name} on {settings.identity} ({trigger['function']}); "
        "profileguard uninstall re-enables it"
    )
    result.changed = True


def _restore_replaced_triggers(conn: psycopg.Connection, identity: TableRef) -> list[str]:
    """Re-enable, in the mode they had, the triggers that --replace-trigger disabled."""
    found = conn.execute("select to_regclass('profileguard.replaced_triggers') is not null")
    row = found.fetchone()
    if not (row and row[0]):
        return []
    oid = table_oid(conn, identity)
    restored = []
    with conn.cursor(row_factory=dict_row) as cur:
        replaced = cur.execute(sqlfiles.query("replaced_triggers")).fetchall()
        for item in replaced:
            if item["table_name"] != str(identity) or oid is None:
                continue
            exists = cur.execute(
                sqlfiles.query("identity_trigger"), {"oid": oid, "name": item["trigger_name"]}
            ).fetchone()
            if exists is None:
                continue
            cur.execute(
                sql.SQL("alter table {} {} {}").format(
                    sql.Identifier(identity.schema, identity.name),
                    sql.SQL(_ENABLE_MODE[item["previous_mode"]]),
                    sql.Identifier(item["trigger_name"]),
                )
            )
            restored.append(str(item["trigger_name"]))
    return restored


def _config_fingerprint(settings: Settings) -> dict[str, Any]:
    return {"package_version": __version__, **settings.describe()}


def _apply(
    conn: psycopg.Connection,
    settings: Settings,
    *,
    strict: bool | None,
    enabled: bool | None,
    create_profile_table: bool,
    source: str,
    replace_triggers: Sequence[str] = (),
    force: bool = False,
) -> InstallResult:
    rec = _Recorder(conn)
    conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (INSTALL_LOCK,))
    before = schema_version(conn)
    result = InstallResult(before, before)
    if inspect_table(conn, settings.profile) is None:
        if not create_profile_table:
            raise ConfigError(
                f"profile table {settings.profile} does not exist",
                hint="run: profileguard install --create-profile-table "
                "(or set profile.table to your existing table)",
            )
        result.notes.extend(_create_profile_table(rec, settings))
        result.created_profile_table = True
    plan = build_plan(conn, settings)
    result.notes.extend(plan.notes)
    # Once installed, a refusal is a warning: turning strict mode off or changing a setting must
    # stay possible while every profile fails.
    result.preflight = _preflight(conn, settings, plan, force=force or before > 0)
    result.notes.extend(f"preflight: {w}" for w in result.preflight.warnings)

    rec.run("create schema if not exists profileguard")
    for migration in pending_migrations(conn):
        rec.run(migration.text)
        rec.run(
            "insert into profileguard.migrations (version, name) values (%(v)s, %(n)s)",
            {"v": migration.version, "n": migration.name},
        )
        result.version_after = max(result.version_after, migration.version)
        result.changed = True

    fingerprint = _config_fingerprint(settings)
    current = Installation.read(conn)
    if current is None:
        rec.run(
            sql.SQL(
                "insert into profileguard.settings (enabled, strict, identity_table, identity_key,"
                " profile_table, profile_key, config, package_version)"
                " values (%(enabled)s, %(strict)s, %(it)s, %(ik)s, %(pt)s, %(pk)s, %(config)s,"
                " %(version)s)"
            ),
            {
                "enabled": True if enabled is None else enabled,
                "strict": bool(strict),
                "it": str(settings.identity),
                "ik": settings.identity.key,
                "pt": str(settings.profile),
                "pk": settings.profile.key,
                "config": json.dumps(fingerprint),
                "version": __version__,
            },
        )
        result.changed = True
    else:
        if str(current.identity) != str(settings.identity):
            raise ConfigError(
                f"profileguard is installed for {current.identity}, "
                f"not {settings.identity}",
                hint="run: profileguard uninstall, then install with the new identity table",
            )
        new_strict = current.strict if strict is None else strict
        new_enabled = current.enabled if enabled is None else enabled
        if (
            current.config != fingerprint
            or new_strict != current.strict
            or new_enabled != current.enabled
        ):
            rec.run(
                "update profileguard.settings set strict = %(strict)s, enabled = %(enabled)s,"
                " profile_table = %(pt)s, profile_key = %(pk)s, config = %(config)s,"
                " package_version = %(version)s, updated_at = now()",
                {
                    "strict": new_strict,
                    "enabled": new_enabled,
                    "pt": str(settings.profile),
                    "pk": settings.profile.key,
                    "config": json.dumps(fingerprint),
                    "version": __version__,
                },
            )
            result.changed = True

    for name in dict.fromkeys(replace_triggers):
        _replace_trigger(rec, settings, name, result)
    rec.run(sqlfiles.read("functions.sql"))
    rec.run(render_generated(plan))
    rec.run(render_sync(plan))
    result.notes.extend(build_sync(plan).notes)
    rec.run(sqlfiles.read("privileges.sql"))
    if result.changed:
        rec.run(
            "insert into profileguard.events (kind, source, message, detail)"
            " values ('config', %(source)s, %(message)s, %(detail)s)",
            {
                "source": source,
                "message": f"{source}: schema version {result.version_after}",
                "detail": json.dumps(
                    {
                        **fingerprint,
                        "notes": result.notes,
                        "replaced_triggers": result.replaced_triggers,
                    }
                ),
            },
        )
    result.statements = rec.statements
    return result


def _preflight(conn: psycopg.Connection, settings: Settings, plan: Plan, *,
               force: bool) -> Preflight:
    """The preflight; refusals stop the install unless `force`."""
    report = preflight.check(conn, settings, plan)
    for failure in report.failures[:5]:
        report.warnings.append(
            f"rehearsal: {failure['subject']} would fail with SQLSTATE {failure['sqlstate']}: "
            f"{failure['message']}"
        )
    if len(report.failures) > 5:
        report.warnings.append(f"rehearsal: {len(report.failures) - 5} more failures "
                               "(see: profileguard install --check)")
    if force:
        report.warnings.extend(report.refusals)
    elif report.refusals:
        raise ConfigError(
            "install refused: " + "; ".join(report.refusals),
            hint="fix the table or the mapping as said, then install again "
            "(profileguard install --check rehearses without changing anything; --force "
            "installs anyway: sign-ups still commit and each failure is recorded)",
        )
    return report


def check(settings: Settings) -> Preflight:
    """The install preflight alone, in a transaction that is rolled back."""
    with _transaction(settings, dry_run=True) as conn:
        if inspect_table(conn, settings.profile) is None:
            raise ConfigError(
                f"profile table {settings.profile} does not exist",
                hint="run: profileguard install --create-profile-table "
                "(or set profile.table to your existing table)",
            )
        plan = build_plan(conn, settings)
        return preflight.check(conn, settings, plan)


@contextmanager
def _transaction(settings: Settings, *, dry_run: bool = False) -> Iterator[psycopg.Connection]:
    """One connection, one transaction: committed on success, rolled back on error or dry run."""
    conn = connect(settings)
    try:
        yield conn
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        raise translate(exc) from exc
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def install(
    settings: Settings,
    *,
    strict: bool = False,
    enabled: bool | None = None,
    create_profile_table: bool = False,
    cron_schedule: str | None = None,
    dry_run: bool = False,
    replace_triggers: Sequence[str] = (),
    force: bool = False,
) -> InstallResult:
    """Install (or re-install) profileguard; `dry_run` rolls back and only returns the SQL.

    The preflight runs first (see `profileguard.preflight`): a refusal raises ConfigError
    unless `force`.

    `replace_triggers` names existing triggers on the identity table that create profiles:
    they are disabled (and recorded, so `uninstall` re-enables them).
    `cron_schedule` (e.g. '* * * * *') also schedules the in-database sweep with pg_cron.
    """
    with _transaction(settings, dry_run=dry_run) as conn:
        result = _apply(
            conn,
            settings,
            strict=strict,
            enabled=enabled,
            create_profile_table=create_profile_table,
            source="install",
            replace_triggers=replace_triggers,
            force=force,
        )
        if cron_schedule is not None:
            result.statements.extend(_schedule_sweep(conn, cron_schedule))
            result.notes.append(
                f"pg_cron job {CRON_JOB!r} runs profileguard.reconcile({CRON_MAX_ROWS}) "
                f"on '{cron_schedule}'"
            )
            result.changed = True
        return result


def _schedule_sweep(conn: psycopg.Connection, schedule: str) -> list[str]:
    """Schedule profileguard.reconcile() with pg_cron (idempotent: the job is named)."""
    if not CRON_SCHEDULE.fullmatch(schedule.strip()):
        raise ConfigError(
            f"--cron-schedule: {schedule!r} is not a cron schedule",
            hint="use five cron fields such as '* * * * *' (every minute) or '30 seconds'",
        )
    row = conn.execute(sqlfiles.query("cron_available")).fetchone()
    available, loaded = row if row else (False, False)
    if not (available and loaded):
        raise ConfigError(
            "pg_cron is not available on this server"
            if not available
            else "pg_cron is installed on this server but not loaded",
            hint="enable pg_cron (Supabase: Database → Extensions; elsewhere add it to "
            "shared_preload_libraries and restart), or run 'profileguard worker' on a host "
            "that reaches the database instead",
        )
    rec = _Recorder(conn)
    rec.run("create extension if not exists pg_cron")
    rec.run(
        sqlfiles.query("cron_schedule"),
        {
            "name": CRON_JOB,
            "schedule": schedule.strip(),
            "command": f"select profileguard.reconcile({CRON_MAX_ROWS})",
        },
    )
    return rec.statements


def upgrade(settings: Settings, *, dry_run: bool = False) -> InstallResult:
    """Apply pending migrations and regenerate the functions, keeping flags as they are."""
    with _transaction(settings, dry_run=dry_run) as conn:
        require_version(conn)
        return _apply(
            conn, settings, strict=None, enabled=None, create_profile_table=False, source="upgrade",
            force=True,
        )


def uninstall(settings: Settings) -> bool:
    """Remove every profileguard object; profiles and users stay. False if nothing was there.

    Triggers that `install --replace-trigger` disabled are enabled again first.
    """
    with _transaction(settings) as conn:
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (INSTALL_LOCK,))
        if not schema_present(conn):
            return False
        installed = Installation.read(conn)
        identity = settings.identity if installed is None else installed.identity
        if inspect_table(conn, identity) is None:
            conn.execute("drop schema if exists profileguard cascade")
        else:
            _restore_replaced_triggers(conn, identity)
            conn.execute(
                _template(
                    "uninstall.sql",
                    identity=sql.Identifier(identity.schema, identity.name),
                    trigger=sql.Identifier(TRIGGER_NAME),
                )
            )
        return True


def set_enabled(settings: Settings, enabled: bool) -> bool:
    """Turn the trigger on or off without uninstalling; returns the previous state."""
    with _transaction(settings) as conn:
        require_version(conn)
        row = conn.execute(
            "select enabled from profileguard.settings for update"
        ).fetchone()
        previous = bool(row and row[0])
        if previous != enabled:
            conn.execute(
                "update profileguard.settings set enabled = %s, updated_at = now()", (enabled,)
            )
            conn.execute(
                "insert into profileguard.events (kind, source, message)"
                " values ('config', 'cli', %s)",
                ("enabled" if enabled else "disabled",),
            )
        return previous


def describe(settings: Settings) -> dict[str, Any]:
    """Package and schema versions and the installed flags."""
    info: dict[str, Any] = {
        "package_version": __version__,
        "latest_schema_version": sqlfiles.latest_version(),
        "installed": False,
        "schema_version": 0,
    }
    with _transaction(settings, dry_run=True) as conn:
        version = schema_version(conn)
        if version:
            found = Installation.read(conn)
            info.update(installed=True, schema_version=version)
            if found:
                info.update(
                    enabled=found.enabled,
                    strict=found.strict,
                    identity_table=str(found.identity),
                    profile_table=str(found.profile),
                    installed_package_version=found.package_version,
                    installed_at=found.installed_at.isoformat() if found.installed_at else None,
                )
        info["upgrade_available"] = bool(version) and bool(pending_migrations(conn))
    return info

"""Install, upgrade, uninstall, enable/disable and describe profileguard in a database.

An install is two transactions under an advisory lock, so two installs never interleave: a long
one that leaves the identity table alone (schema, migrations, functions; a failure leaves nothing
behind), then a short one, with a lock_timeout and retries, for what locks the identity table (the
profile table's foreign key, the trigger, the takeover of a legacy trigger) — every login updates
that table. Nothing needs to own it. Installing again with the same settings changes nothing and
takes no lock on it. `render` gives the same statements without running them.
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

from profileguard import preflight, takeover
from profileguard import sql as sqlfiles
from profileguard.catalog import Column, TableFacts, inspect_table, table_oid
from profileguard.config import Settings, TableRef
from profileguard.db import connect, translate
from profileguard.errors import ConfigError, NotInstalledError, ProfileGuardError
from profileguard.installation import Installation, schema_present, schema_version, table_parts
from profileguard.locking import INSTALL_LOCK, short_transaction
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
from profileguard.version import __version__

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
# Rendering waits this long at most behind an ACCESS EXCLUSIVE lock on a table it describes.
RENDER_LOCK_TIMEOUT_MS = 5000


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
    plan: Plan | None = field(default=None, repr=False)  # for the identity phase
    # Rendering only: how many of the last statements lock the identity table, and the guard.
    identity_statements: int = 0
    guard: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "version_before": self.version_before,
            "version_after": self.version_after,
            "created_profile_table": self.created_profile_table,
            "changed": self.changed,
            "notes": self.notes,
            "replaced_triggers": self.replaced_triggers,
            "preflight": None if self.preflight is None else self.preflight.as_dict(),
        }


class _Recorder:
    """Renders SQL to text and keeps it; runs it too unless only rendering (`profileguard sql`).

    Statements carry their values as literals, so the text kept is exactly the text run.
    """

    def __init__(self, conn: psycopg.Connection, *, execute: bool = True):
        self.conn = conn
        self.execute = execute
        self.statements: list[str] = []

    def run(self, statement: str | sql.Composable) -> None:
        text = statement if isinstance(statement, str) else statement.as_string(self.conn)
        self.statements.append(text.strip())
        if self.execute:
            self.conn.execute(text)


def _template(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(sqlfiles.read(name)).format(**parts)


def _table_parts(settings: Settings, key_type: str) -> dict[str, sql.Composable]:
    return table_parts(settings.identity, settings.profile, key_type)


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


def _sync_parts(plan: Plan) -> dict[str, sql.Composable]:
    """The placeholders of sync.sql and sync_triggers.sql for the configured update policies
    and redacted columns."""
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
    return dict(
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


def render_sync(plan: Plan) -> sql.Composed:
    """The set-based sync and the drift finder (sync.sql)."""
    return _template("sync.sql", **_sync_parts(plan))


def render_sync_triggers(plan: Plan) -> sql.Composed:
    """The UPDATE triggers on the identity table (sync_triggers.sql): run in the short
    transaction that may lock it."""
    return _template("sync_triggers.sql", **_sync_parts(plan))


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
        text("username"), text("full_name"), text("avatar_url"),
        stamp("created_at"), stamp("updated_at"),
    ]
    return TableFacts(
        settings.profile,
        {c.name: c for c in columns},
        frozenset({settings.profile.key, "username"}),
        ("CHECK ((char_length(username) >= 3))",),
    )


def _create_profile_table(
    rec: _Recorder, settings: Settings, identity: TableFacts | None
) -> tuple[TableFacts, list[str]]:
    """Create the profile table (without its foreign key: see _identity_phase)."""
    if identity is None or settings.identity.key not in identity.columns:
        raise ConfigError(
            f"identity table {settings.identity} (key {settings.identity.key}) does not exist",
            hint="set identity.table / identity.key to your users table before creating profiles",
        )
    facts = profile_table_facts(identity, settings)
    parts = _table_parts(settings, identity.columns[settings.identity.key].type)
    has_uid = rec.conn.execute("select to_regprocedure('auth.uid()') is not null").fetchone()
    policies = bool(has_uid and has_uid[0]) and _role_exists(rec.conn, "authenticated")
    rec.run(_template("profile_table.sql", **parts))
    _grant_profile_table(rec, parts["profile"])
    if policies:
        rec.run(_template("profile_policies.sql", **parts))
        return facts, []
    return facts, [
        f"RLS is on for {settings.profile} with no policies (no auth.uid() or no role "
        "'authenticated' here): only its owner and roles with BYPASSRLS can read it"
    ]


PROFILE_GRANTS = "profile_grants.sql"


def _grant_profile_table(rec: _Recorder, profile: sql.Composable) -> None:
    """Explicit least-privilege grants on a profile table profileguard created (see the file)."""
    for role, text in sqlfiles.queries(PROFILE_GRANTS).items():
        if role == "public" or _role_exists(rec.conn, role):
            rec.run(sql.SQL(text).format(profile=profile))



def _foreign_key_name(settings: Settings) -> str:
    """The name PostgreSQL gives an inline REFERENCES on the profile key."""
    return f"{settings.profile.name}_{settings.profile.key}_fkey"[:63]


def _config_fingerprint(settings: Settings) -> dict[str, Any]:
    return {"package_version": __version__, **settings.describe()}


def _lock_install(rec: _Recorder) -> None:
    rec.run(sql.SQL("select pg_advisory_xact_lock(hashtext({}))").format(
        sql.Literal(INSTALL_LOCK)))


def _main_phase(
    rec: _Recorder,
    settings: Settings,
    *,
    strict: bool | None,
    enabled: bool | None,
    create_profile_table: bool,
    source: str,
    force: bool = False,
) -> InstallResult:
    """Everything install does that leaves the identity table alone, in one transaction.

    Reads first, then writes: the same code renders `profileguard sql` without running it.
    """
    conn = rec.conn
    _lock_install(rec)
    before = schema_version(conn)
    result = InstallResult(before, before)
    profile_facts = None
    create_table = inspect_table(conn, settings.profile) is None
    if create_table:
        if not create_profile_table:
            raise ConfigError(
                f"profile table {settings.profile} does not exist",
                hint="run: profileguard install --create-profile-table "
                "(or set profile.table to your existing table)",
            )
        profile_facts = profile_table_facts_or_error(conn, settings)
    plan = build_plan(conn, settings, profile_facts=profile_facts)
    result.plan = plan
    if rec.execute and not create_table:
        # Once installed, a refusal is a warning: turning strict mode off or changing a setting
        # must stay possible while every profile fails.
        result.preflight = _preflight(conn, settings, plan, force=force or before > 0)
        result.notes.extend(f"preflight: {w}" for w in result.preflight.warnings)
    pending = pending_migrations(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        current = cur.execute(sqlfiles.query("settings")).fetchone() if before else None

    if create_table:
        _, notes = _create_profile_table(rec, settings, plan.identity)
        result.notes.extend(notes)
        result.created_profile_table = True
    result.notes.extend(plan.notes)
    rec.run("create schema if not exists profileguard")
    for migration in pending:
        rec.run(migration.text)
        rec.run(sql.SQL(
            "insert into profileguard.migrations (version, name) values ({}, {})"
        ).format(sql.Literal(migration.version), sql.Literal(migration.name)))
        result.version_after = max(result.version_after, migration.version)
        result.changed = True

    fingerprint = _config_fingerprint(settings)
    if current is None:
        rec.run(sql.SQL(
            "insert into profileguard.settings (enabled, strict, identity_table, identity_key,"
            " profile_table, profile_key, config, package_version)"
            " values ({}, {}, {}, {}, {}, {}, {}, {})"
        ).format(*map(sql.Literal, (
            True if enabled is None else enabled, bool(strict), str(settings.identity),
            settings.identity.key, str(settings.profile), settings.profile.key,
            json.dumps(fingerprint), __version__,
        ))))
        result.changed = True
    else:
        if current["identity_table"] != str(settings.identity):
            raise ConfigError(
                f"profileguard is installed for {current['identity_table']}, "
                f"not {settings.identity}",
                hint="run: profileguard uninstall, then install with the new identity table",
            )
        new_strict = current["strict"] if strict is None else strict
        new_enabled = current["enabled"] if enabled is None else enabled
        if (
            current["config"] != fingerprint
            or new_strict != current["strict"]
            or new_enabled != current["enabled"]
        ):
            rec.run(sql.SQL(
                "update profileguard.settings set strict = {}, enabled = {},"
                " profile_table = {}, profile_key = {}, config = {},"
                " package_version = {}, updated_at = now()"
            ).format(*map(sql.Literal, (
                new_strict, new_enabled, str(settings.profile), settings.profile.key,
                json.dumps(fingerprint), __version__,
            ))))
            result.changed = True

    rec.run(sqlfiles.read("functions.sql"))
    rec.run(render_generated(plan))
    rec.run(render_sync(plan))
    result.notes.extend(build_sync(plan).notes)
    rec.run(sqlfiles.read("privileges.sql"))
    if result.changed:
        rec.run(_event(source, f"{source}: schema version {result.version_after}",
                       {**fingerprint, "notes": result.notes}))
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


def profile_table_facts_or_error(conn: psycopg.Connection, settings: Settings) -> TableFacts:
    identity = inspect_table(conn, settings.identity)
    if identity is None or settings.identity.key not in identity.columns:
        raise ConfigError(
            f"identity table {settings.identity} (key {settings.identity.key}) does not exist",
            hint="set identity.table / identity.key to your users table before creating profiles",
        )
    return profile_table_facts(identity, settings)


def _event(source: str, message: str, detail: dict[str, Any]) -> sql.Composed:
    return sql.SQL(
        "insert into profileguard.events (kind, source, message, detail)"
        " values ('config', {}, {}, {})"
    ).format(sql.Literal(source), sql.Literal(message), sql.Literal(json.dumps(detail)))


def trigger_statement(settings: Settings) -> sql.Composed:
    """The statement that creates profileguard's trigger (one line: audit prints it as a fix).

    CREATE OR REPLACE needs only the TRIGGER privilege on the identity table, not ownership, and
    re-enables the trigger if someone disabled it. It locks the table against the UPDATE every
    login makes: run it in a short transaction (locking.short_transaction)."""
    return _template(
        "trigger.sql", identity=sql.Identifier(settings.identity.schema, settings.identity.name)
    )


def _identity_phase(
    rec: _Recorder,
    settings: Settings,
    result: InstallResult,
    *,
    create_profile_table: bool,
    replace_triggers: Sequence[str],
    source: str,
) -> None:
    """What locks the identity table, kept short and last: the profile table's foreign key,
    profileguard's trigger, and the takeover of legacy triggers (in one step, so that exactly
    one of them creates profiles at any moment). Reads first, then writes."""
    conn = rec.conn
    identity = settings.identity
    oid = table_oid(conn, identity)
    profile_oid = table_oid(conn, settings.profile)
    add_key = False
    if create_profile_table:
        if profile_oid is None:
            add_key = True
        elif oid is not None:
            row = conn.execute(takeover.query("foreign_key_to"),
                               {"profile": profile_oid, "identity": oid}).fetchone()
            add_key = not (row and row[0])
    row = conn.execute(takeover.query("profileguard_trigger_current"), {"oid": oid}).fetchone()
    trigger_current = bool(row and row[0])
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
        "constraint": sql.Identifier(_foreign_key_name(settings)),
    }
    if add_key:
        rec.run(_template("profile_foreign_key.sql", **parts))
        result.changed = True
    if not trigger_current:
        rec.run(trigger_statement(settings))
        result.changed = True
    if result.plan is not None:
        rec.run(render_sync_triggers(result.plan))
    for step in takeovers:
        rec.run(step.statement)
        rec.run(sql.SQL(
            "insert into profileguard.replaced_triggers"
            " (table_name, trigger_name, function_name, previous_mode, method, saved_definition)"
            " values ({}, {}, {}, {}, {}, {})"
            " on conflict (table_name, trigger_name) do update"
            " set function_name = excluded.function_name,"
            " previous_mode = excluded.previous_mode, method = excluded.method,"
            " saved_definition = excluded.saved_definition, replaced_at = now()"
        ).format(*map(sql.Literal, (
            str(identity), step.name, step.function, step.previous_mode, step.method,
            step.saved_definition,
        ))))
        result.replaced_triggers.append(step.name)
        result.notes.append(step.note)
        result.changed = True
    if takeovers:
        rec.run(_event(source, f"{source}: took over from {', '.join(result.replaced_triggers)}",
                       {"replaced_triggers": result.replaced_triggers,
                        "methods": {s.name: s.method for s in takeovers}}))


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


def _run_install(
    settings: Settings,
    *,
    strict: bool | None,
    enabled: bool | None,
    create_profile_table: bool,
    source: str,
    replace_triggers: Sequence[str] = (),
    cron_schedule: str | None = None,
    require_installed: bool = False,
    force: bool = False,
) -> InstallResult:
    """The long transaction (no lock on the identity table), then the short one that takes it."""
    with _transaction(settings) as conn:
        if require_installed and schema_version(conn) == 0:
            raise NotInstalledError(
                "profileguard is not installed in this database", hint="run: profileguard install"
            )
        rec = _Recorder(conn)
        result = _main_phase(rec, settings, strict=strict, enabled=enabled,
                             create_profile_table=create_profile_table, source=source,
                             force=force)
        if cron_schedule is not None:
            _schedule_sweep(rec, cron_schedule)
            result.notes.append(
                f"pg_cron job {CRON_JOB!r} runs profileguard.reconcile({CRON_MAX_ROWS}) "
                f"on '{cron_schedule}'"
            )
            result.changed = True
    statements = rec.statements

    def identity_step(conn: psycopg.Connection) -> list[str]:
        attempt = InstallResult(result.version_before, result.version_after, plan=result.plan)
        step = _Recorder(conn)
        _identity_phase(step, settings, attempt, create_profile_table=create_profile_table,
                        replace_triggers=replace_triggers, source=source)
        result.changed = result.changed or attempt.changed
        result.notes.extend(attempt.notes)
        result.replaced_triggers.extend(attempt.replaced_triggers)
        return step.statements

    try:
        statements += short_transaction(settings, identity_step, what=f"{source} (trigger)")
    except ProfileGuardError as exc:
        done = (f"profileguard's functions are {source}ed, but its trigger on "
                f"{settings.identity} is not: run profileguard {source} again")
        exc.hint = f"{exc.hint}; {done}" if exc.hint else done
        raise
    result.statements = statements
    return result


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


def render(
    settings: Settings,
    *,
    strict: bool = False,
    enabled: bool | None = None,
    create_profile_table: bool = False,
    replace_triggers: Sequence[str] = (),
    source: str = "install",
) -> InstallResult:
    """What `install` would run here, rendered without running it: catalog reads only, in a
    read-only transaction that is rolled back. Deparsing a table's constraints takes ACCESS
    SHARE on that table (only ACCESS EXCLUSIVE conflicts with it); nothing else is locked."""
    enabled = takeover_enables(enabled, replace_triggers)
    with _transaction(settings, dry_run=True) as conn:
        conn.execute("set transaction read only")
        conn.execute(f"set local lock_timeout = {RENDER_LOCK_TIMEOUT_MS}")
        if source == "upgrade" and schema_version(conn) == 0:
            raise NotInstalledError(
                "profileguard is not installed in this database", hint="run: profileguard install"
            )
        rec = _Recorder(conn, execute=False)
        own = source == "install"
        result = _main_phase(rec, settings, strict=strict if own else None, enabled=enabled,
                             create_profile_table=create_profile_table, source=source)
        main = len(rec.statements)
        _identity_phase(rec, settings, result, create_profile_table=create_profile_table,
                        replace_triggers=replace_triggers, source=source)
        result.statements = rec.statements
        result.identity_statements = len(rec.statements) - main
        result.guard = _render_guard(conn, settings, result.version_before)
        return result


def _table_signature(conn: psycopg.Connection, ref: TableRef) -> str:
    row = conn.execute(
        sqlfiles.query("table_signature"), {"oid": table_oid(conn, ref)}
    ).fetchone()
    return str(row[0]) if row else ""


def _render_guard(conn: psycopg.Connection, settings: Settings, version: int) -> str:
    """A DO block that stops the rendered file when the target database is not the one it was
    rendered for: other columns in the identity or profile table, or another schema version."""
    return _template(
        "render_guard.sql",
        identity=sql.Literal(sql.Identifier(settings.identity.schema, settings.identity.name)
                             .as_string(conn)),
        profile=sql.Literal(sql.Identifier(settings.profile.schema, settings.profile.name)
                            .as_string(conn)),
        identity_signature=sql.Literal(_table_signature(conn, settings.identity)),
        profile_signature=sql.Literal(_table_signature(conn, settings.profile)),
        version=sql.Literal(version),
    ).as_string(conn)


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
    """Install (or re-install) profileguard; `dry_run` only renders the SQL (see `render`).

    `replace_triggers` names existing triggers on the identity table that create profiles:
    they are neutralised without owning the table (see takeover.py) and recorded, so that
    `uninstall` restores them. `cron_schedule` (e.g. '* * * * *') also schedules the
    in-database sweep with pg_cron. Everything that locks the identity table runs last, in a
    short transaction of its own (see locking.py).
    """
    enabled = takeover_enables(enabled, replace_triggers)
    if dry_run:
        return render(settings, strict=strict, enabled=enabled,
                      create_profile_table=create_profile_table,
                      replace_triggers=replace_triggers)
    return _run_install(
        settings, strict=strict, enabled=enabled, create_profile_table=create_profile_table,
        source="install", replace_triggers=replace_triggers, cron_schedule=cron_schedule,
        force=force,
    )


def _schedule_sweep(rec: _Recorder, schedule: str) -> None:
    """Schedule profileguard.reconcile() with pg_cron (idempotent: the job is named)."""
    if not CRON_SCHEDULE.fullmatch(schedule.strip()):
        raise ConfigError(
            f"--cron-schedule: {schedule!r} is not a cron schedule",
            hint="use five cron fields such as '* * * * *' (every minute) or '30 seconds'",
        )
    row = rec.conn.execute(sqlfiles.query("cron_available")).fetchone()
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
    rec.run("create extension if not exists pg_cron")
    rec.run(sql.SQL("select cron.schedule({}, {}, {})").format(
        sql.Literal(CRON_JOB), sql.Literal(schedule.strip()),
        sql.Literal(f"select profileguard.reconcile({CRON_MAX_ROWS})"),
    ))


def upgrade(settings: Settings, *, dry_run: bool = False) -> InstallResult:
    """Apply pending migrations and regenerate the functions, keeping flags as they are."""
    if dry_run:
        return render(settings, source="upgrade")
    return _run_install(settings, strict=None, enabled=None, create_profile_table=False,
                        source="upgrade", require_installed=True, force=True)


def _restore_replaced_triggers(
    conn: psycopg.Connection, identity: TableRef
) -> list[str]:
    """Give back the legacy triggers `install --replace-trigger` took over; returns notes.

    Each restored trigger's record is deleted in the same transaction, so running this again
    (after a failed uninstall) restores nothing twice.
    """
    found = conn.execute("select to_regclass('profileguard.replaced_triggers') is not null")
    row = found.fetchone()
    if not (row and row[0]):
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        replaced = cur.execute(sqlfiles.query("replaced_triggers")).fetchall()
    notes = []
    for item in replaced:
        if item["table_name"] != str(identity):
            continue
        statement, note = takeover.restore_statement(conn, identity, item)
        if statement is not None:
            conn.execute(statement)
        conn.execute(
            "delete from profileguard.replaced_triggers where table_name = %s"
            " and trigger_name = %s", (item["table_name"], item["trigger_name"]))
        notes.append(note)
    return notes


def uninstall(settings: Settings, *, notes: list[str] | None = None) -> bool:
    """Remove every profileguard object; profiles and users stay. False if nothing was there;
    what was given back is appended to `notes`.

    First the legacy triggers `install --replace-trigger` took over get their behaviour back
    (one short transaction), then the schema is dropped (another one: dropping it drops
    profileguard's trigger on the identity table, which locks that table until commit).
    """
    def restore(conn: psycopg.Connection) -> tuple[bool, list[str]]:
        if not schema_present(conn):
            return False, []
        installed = Installation.read(conn)
        identity = settings.identity if installed is None else installed.identity
        if inspect_table(conn, identity) is None:
            return True, []
        return True, _restore_replaced_triggers(conn, identity)

    installed, restored = short_transaction(
        settings, restore, what="uninstall (restore triggers)"
    )
    if notes is not None:
        notes.extend(restored)
    if not installed:
        return False

    def drop(conn: psycopg.Connection) -> None:
        if schema_present(conn):
            conn.execute(sqlfiles.read("uninstall.sql"))

    short_transaction(settings, drop, what="uninstall (drop schema)")
    return True


def set_enabled(settings: Settings, enabled: bool) -> bool:
    """Turn the trigger on or off without uninstalling; returns the previous state."""
    with _transaction(settings) as conn:
        if schema_version(conn) == 0:
            raise NotInstalledError(
                "profileguard is not installed in this database", hint="run: profileguard install"
            )
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
            with conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(sqlfiles.query("settings")).fetchone()
            info.update(installed=True, schema_version=version)
            if row:
                info.update(
                    enabled=row["enabled"],
                    strict=row["strict"],
                    identity_table=row["identity_table"],
                    profile_table=row["profile_table"],
                    installed_package_version=row["package_version"],
                    installed_at=row["installed_at"].isoformat(),
                )
        info["upgrade_available"] = bool(version) and bool(pending_migrations(conn))
    return info

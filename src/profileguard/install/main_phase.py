"""The long install transaction: everything that leaves the identity table alone (schema,
migrations, settings, functions), after the preflight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.catalog import inspect_table
from profileguard.config import Settings
from profileguard.errors import ConfigError
from profileguard.install import preflight, takeover
from profileguard.install.locking import INSTALL_LOCK
from profileguard.install.migrations import pending_migrations
from profileguard.install.preflight import Preflight
from profileguard.install.profile_table import make_profile_table, profile_table_facts_or_error
from profileguard.install.run import InstallResult, Recorder
from profileguard.install.templates import (
    MIGRATION_SOURCE,
    config_event,
    differing_functions,
    render_generated,
    render_sync,
)
from profileguard.installation import schema_version
from profileguard.mapping import Plan, build_plan, build_sync, legacy
from profileguard.sqlformat import json_text
from profileguard.version import __version__


def config_fingerprint(settings: Settings) -> dict[str, Any]:
    """What the settings row's `config` holds: the settings installed, and the [alerts]
    thresholds that profileguard.health() judges by (so that SQL callers judge alike)."""
    return {
        "package_version": __version__,
        **settings.describe(),
        "alerts": settings.alerts.thresholds(),
    }


def adopt_learned(
    conn: psycopg.Connection, settings: Settings, replace_triggers: Sequence[str]
) -> tuple[Settings, list[str]]:
    """The settings with the mapping learned from the triggers taken over now (unchanged when
    none is named); a function that cannot be read stops here unless a mapping is configured."""
    found = takeover.learned(conn, settings.identity, settings.profile, replace_triggers)
    return legacy.adopt(settings, found, taking_over=True)


def _lock_install(rec: Recorder) -> None:
    rec.run(sql.SQL("select pg_advisory_xact_lock(hashtext({}))").format(sql.Literal(INSTALL_LOCK)))


def main_phase(
    rec: Recorder,
    settings: Settings,
    *,
    strict: bool | None,
    enabled: bool | None,
    create_profile_table: bool,
    source: str,
    force: bool = False,
    replace_triggers: Sequence[str] = (),
) -> InstallResult:
    """Everything install does that leaves the identity table alone, in one transaction.

    Reads first, then writes: the same code renders `profileguard sql` without running it.
    Taking over from `replace_triggers`, the mapping their functions implied is the default
    (mapping/legacy.py); the settings in effect are the plan's.
    """
    conn = rec.conn
    _lock_install(rec)
    settings, learned_notes = adopt_learned(conn, settings, replace_triggers)
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
    settings = plan.settings
    result.plan = plan
    result.notes.extend(learned_notes)
    if rec.execute and not create_table:
        # Once installed, a refusal is a warning: turning strict mode off or changing a setting
        # must stay possible while every profile fails.
        result.preflight = _preflight(conn, settings, plan, force=force or before > 0)
        result.notes.extend(f"preflight: {w}" for w in result.preflight.warnings)
    pending = pending_migrations(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        current = cur.execute(sqlfiles.query("settings")).fetchone() if before else None

    if create_table:
        _, notes = make_profile_table(rec, settings, plan.identity)
        result.notes.extend(notes)
        result.created_profile_table = True
    result.notes.extend(plan.notes)
    rec.run("create schema if not exists profileguard")
    fresh = before == 0
    if fresh:
        _create_tables(rec, result)
    else:
        _apply_migrations(rec, pending, result)

    rec.run(sqlfiles.functions())
    # Triggers on profileguard's tables and data steps that call a function, now that they exist.
    if fresh:
        rec.run(sqlfiles.schema().after_functions)
    else:
        for migration in pending:
            if migration.after_functions.strip():
                rec.run(migration.after_functions)

    fingerprint = config_fingerprint(settings)
    result.config_changed = current is None or current["config"] != fingerprint
    _write_settings(
        rec, settings, current, fingerprint, strict=strict, enabled=enabled, result=result
    )
    rec.run(sqlfiles.query("render_flags"))
    generated = (render_generated(plan), render_sync(plan))
    if not fresh and not result.changed:
        # The profile table changed since the mapping was planned (a CHECK, a unique index).
        stale = differing_functions(conn, generated)
        if stale:
            result.changed = True
            result.notes.append(f"planned again for the profile table: {', '.join(stale)}")
    for part in generated:
        rec.run(part)
    result.notes.extend(build_sync(plan).notes)
    rec.run(sqlfiles.read("privileges.sql"))
    if result.changed:
        rec.run(
            config_event(
                source if rec.execute else MIGRATION_SOURCE,
                f"{source}: schema version {result.version_after}",
                {**fingerprint, "notes": result.notes},
            )
        )
    return result


def _create_tables(rec: Recorder, result: InstallResult) -> None:
    """A fresh install: the tables as they are now, every migration recorded as applied."""
    rec.run(sqlfiles.schema().tables)
    _record(rec, sqlfiles.migrations(), result)


def _apply_migrations(
    rec: Recorder, pending: list[sqlfiles.Migration], result: InstallResult
) -> None:
    """An upgrade: the pending migrations' table and data changes in order, recording each."""
    for migration in pending:
        rec.run(migration.text)
        _record(rec, [migration], result)


def _record(rec: Recorder, migrations: Sequence[sqlfiles.Migration], result: InstallResult) -> None:
    """The migrations recorded as applied, in one statement."""
    rows = [sql.SQL("({}, {})").format(m.version, m.name) for m in migrations]
    rec.run(
        sql.SQL("insert into profileguard.migrations (version, name) values\n    {}").format(
            sql.SQL(",\n    ").join(rows)
        )
    )
    result.version_after = max(result.version_after, *(m.version for m in migrations))
    result.changed = True


def _write_settings(
    rec: Recorder,
    settings: Settings,
    current: dict[str, Any] | None,
    fingerprint: dict[str, Any],
    *,
    strict: bool | None,
    enabled: bool | None,
    result: InstallResult,
) -> None:
    """Write the settings row (flags left as they are where None); refuse another identity table."""
    if current is None:
        rec.run(
            sql.SQL(
                "insert into profileguard.settings (enabled, strict, identity_table, identity_key,"
                "\n    profile_table, profile_key, config, package_version)"
                "\nvalues ({}, {}, {}, {}, {}, {},\n{},\n{})"
            ).format(
                *map(
                    sql.Literal,
                    (
                        True if enabled is None else enabled,
                        bool(strict),
                        str(settings.identity),
                        settings.identity.key,
                        str(settings.profile),
                        settings.profile.key,
                        json_text(fingerprint),
                        __version__,
                    ),
                )
            )
        )
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
            rec.run(
                sql.SQL(
                    "update profileguard.settings set strict = {}, enabled = {},"
                    " profile_table = {}, profile_key = {},\nconfig = {},"
                    "\npackage_version = {}, updated_at = now()"
                ).format(
                    *map(
                        sql.Literal,
                        (
                            new_strict,
                            new_enabled,
                            str(settings.profile),
                            settings.profile.key,
                            json_text(fingerprint),
                            __version__,
                        ),
                    )
                )
            )
            result.changed = True


def _preflight(
    conn: psycopg.Connection, settings: Settings, plan: Plan, *, force: bool
) -> Preflight:
    """The preflight; refusals stop the install unless `force`."""
    report = preflight.check(conn, settings, plan)
    for failure in report.failures[:5]:
        report.warnings.append(
            f"rehearsal: {failure['subject']} would fail with SQLSTATE {failure['sqlstate']}: "
            f"{failure['message']}"
        )
    if len(report.failures) > 5:
        report.warnings.append(
            f"rehearsal: {len(report.failures) - 5} more failures "
            "(see: profileguard install --check)"
        )
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

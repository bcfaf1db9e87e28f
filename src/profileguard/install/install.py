"""`install`: the long transaction, then the short one that locks the identity table;
`install --check` (the preflight alone)."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from profileguard.catalog import inspect_table
from profileguard.config import Settings
from profileguard.errors import ConfigError, NotInstalledError, ProfileGuardError
from profileguard.install import preflight, takeover
from profileguard.install.cron import schedule_sweep
from profileguard.install.identity_phase import (
    check_trigger_choice,
    identity_phase,
    takeover_enables,
)
from profileguard.install.locking import short_transaction
from profileguard.install.main_phase import adopt_learned, main_phase
from profileguard.install.preflight import Preflight
from profileguard.install.render import render
from profileguard.install.run import InstallResult, Recorder, transaction
from profileguard.installation import schema_version
from profileguard.mapping import build_plan, legacy


def check(settings: Settings, replace_triggers: Sequence[str] = ()) -> Preflight:
    """The install preflight alone, in a transaction that is rolled back. Beside a legacy trigger
    (named by `replace_triggers`, or taken over already) the rehearsal runs its function's INSERT
    too and compares the profiles column by column; the mapping is the one install would use."""
    with transaction(settings, dry_run=True) as conn:
        if inspect_table(conn, settings.profile) is None:
            raise ConfigError(
                f"profile table {settings.profile} does not exist",
                hint="run: profileguard install --create-profile-table "
                "(or set profile.table to your existing table)",
            )
        settings, notes = adopt_learned(conn, settings, replace_triggers)
        plan = build_plan(conn, settings)
        found = (
            takeover.learned(conn, settings.identity, settings.profile, replace_triggers)
            if replace_triggers
            else legacy.recorded(conn, settings.identity, settings.profile)
        )
        report = preflight.check(conn, plan.settings, plan, legacy.combined(found))
        report.notes.extend(notes)
        return report


def run_install(
    settings: Settings,
    *,
    strict: bool | None,
    enabled: bool | None,
    create_profile_table: bool,
    source: str,
    replace_triggers: Sequence[str] = (),
    keep_triggers: Sequence[str] = (),
    cron_schedule: str | None = None,
    require_installed: bool = False,
    force: bool = False,
) -> InstallResult:
    """The long transaction (no lock on the identity table), then the short one that takes it.
    An install first checks that no other trigger would create profiles beside profileguard's
    unaccounted for (`check_trigger_choice`), before anything changes."""
    with transaction(settings) as conn:
        if require_installed and schema_version(conn) == 0:
            raise NotInstalledError(
                "profileguard is not installed in this database", hint="run: profileguard install"
            )
        beside: list[str] = []
        if source == "install":
            beside = check_trigger_choice(
                conn,
                settings,
                enabled=enabled,
                replace_triggers=replace_triggers,
                keep_triggers=keep_triggers,
                command=source,
            )
        rec = Recorder(conn)
        result = main_phase(
            rec,
            settings,
            strict=strict,
            enabled=enabled,
            create_profile_table=create_profile_table,
            source=source,
            replace_triggers=replace_triggers,
            force=force,
        )
        result.notes.extend(beside)
        if cron_schedule is not None:
            schedule_sweep(rec, cron_schedule, result)
    statements = rec.statements

    def identity_step(conn: psycopg.Connection) -> list[str]:
        attempt = InstallResult(
            result.version_before,
            result.version_after,
            plan=result.plan,
            config_changed=result.config_changed,
        )
        step = Recorder(conn)
        identity_phase(
            step,
            settings,
            attempt,
            create_profile_table=create_profile_table,
            replace_triggers=replace_triggers,
            keep_triggers=keep_triggers,
            source=source,
        )
        result.changed = result.changed or attempt.changed
        result.notes.extend(attempt.notes)
        result.replaced_triggers.extend(attempt.replaced_triggers)
        return step.statements

    try:
        statements += short_transaction(settings, identity_step, what=f"{source} (trigger)")
    except ProfileGuardError as exc:
        done = (
            f"profileguard's functions are {source}ed, but its trigger on "
            f"{settings.identity} is not: run profileguard {source} again"
        )
        exc.hint = f"{exc.hint}; {done}" if exc.hint else done
        raise
    result.statements = statements
    return result


def install(
    settings: Settings,
    *,
    strict: bool = False,
    enabled: bool | None = None,
    create_profile_table: bool = False,
    cron_schedule: str | None = None,
    dry_run: bool = False,
    replace_triggers: Sequence[str] = (),
    keep_triggers: Sequence[str] = (),
    force: bool = False,
) -> InstallResult:
    """Install (or re-install) profileguard; `dry_run` only renders the SQL (see `render`).

    `replace_triggers` names existing triggers on the identity table that create profiles:
    they are neutralised without owning the table (see takeover.py) and recorded, so that
    `uninstall` restores them. `keep_triggers` names those left to create profiles beside
    profileguard, recorded as kept. Installing enabled beside such a trigger named by neither
    is refused (UsageError) before anything changes. `cron_schedule` (e.g. '* * * * *') also
    schedules the in-database sweep with pg_cron. Everything that locks the identity table runs
    last, in a short transaction of its own (see locking.py).
    """
    enabled = takeover_enables(enabled, replace_triggers)
    if dry_run:
        return render(
            settings,
            strict=strict,
            enabled=enabled,
            create_profile_table=create_profile_table,
            replace_triggers=replace_triggers,
            keep_triggers=keep_triggers,
            command="install",
            cron_schedule=cron_schedule,
        )
    return run_install(
        settings,
        strict=strict,
        enabled=enabled,
        create_profile_table=create_profile_table,
        source="install",
        replace_triggers=replace_triggers,
        keep_triggers=keep_triggers,
        cron_schedule=cron_schedule,
        force=force,
    )

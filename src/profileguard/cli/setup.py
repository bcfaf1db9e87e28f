"""Set-up commands: install, sql, upgrade, uninstall, enable, disable, audit."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from profileguard import __version__
from profileguard import install as installer
from profileguard.cli.app import command, state
from profileguard.cli.options import (
    CreateProfileTableOption,
    CronScheduleOption,
    DisabledOption,
    JsonOption,
    KeepTriggerOption,
    ReplaceTriggerOption,
    ScheduleOption,
    StrictOption,
)
from profileguard.cli.render import err, out, print_fields, print_json, print_sql
from profileguard.errors import ConfigError, ExitCode, UsageError

# A rendered file's cap on each lock wait other than the retried one on the identity table's
# (none of them can queue a sign-in: they wait only behind ACCESS EXCLUSIVE on the identity or
# profile table, or behind profileguard's own users of its tables).
FILE_LOCK_TIMEOUT = "10s"
LAST_AND_SHORT = (
    "-- Last and short: these statements lock the users table, which every sign-in updates."
)


def _install_output(result: installer.InstallResult, as_json: bool) -> None:
    if as_json:
        print_json(result.as_dict())
        return
    if result.changed and result.version_before == result.version_after:
        out.print(f"profileguard schema version {result.version_after}: configuration updated.")
    elif result.changed:
        out.print(
            f"profileguard schema version {result.version_after} installed "
            f"(was {result.version_before or 'not installed'})."
        )
    else:
        out.print(
            f"profileguard schema version {result.version_after} already installed; "
            "nothing changed."
        )
    if result.created_profile_table:
        out.print("Created the profile table (Supabase style, RLS on).")
    for note in result.notes:
        out.print(f"note: {note}", highlight=False)


def _preflight_output(report: Any, as_json: bool) -> None:
    """Print a preflight; exit 2 when install would be refused, 1 when some profile fails."""
    if as_json:
        print_json(report.as_dict())
    else:
        for refusal in report.refusals:
            err.print(f"[bold red]refused:[/] {refusal}", highlight=False)
        for warning in report.warnings:
            out.print(f"warning: {warning}", highlight=False)
        for note in report.notes:
            out.print(f"note: {note}", highlight=False)
        for failure in report.failures:
            out.print(
                f"would fail: {failure['subject']}: SQLSTATE {failure['sqlstate']}: "
                f"{failure['message']}",
                highlight=False,
                soft_wrap=True,
            )
        if report.legacy is not None:
            out.print(f"side by side with the legacy trigger {report.legacy}:", highlight=False)
            for line in report.comparison():
                out.print(f"  {line}", highlight=False)
        out.print(
            f"preflight: {report.rehearsed} profiles rehearsed, {len(report.failures)} would fail.",
            highlight=False,
        )
    if report.refusals:
        raise typer.Exit(2)
    if report.failures:
        raise typer.Exit(1)


def render_file(result: installer.InstallResult, *, uninstall: bool = False) -> str:
    """The migration file `profileguard sql` prints: the precondition check first, then what
    leaves the identity table alone, then the retried lock and the statements that lock it."""
    main = result.statements[: len(result.statements) - result.identity_statements]
    last = result.statements[len(main) :]
    command = "profileguard uninstall" if uninstall else "profileguard install"
    head = [
        f"-- profileguard {__version__}: what `{command}` runs, rendered by "
        f"`profileguard sql{' --uninstall' if uninstall else ''}` (nothing was run to render it).",
        "-- Apply it in one transaction: `supabase db push` (one transaction per migration file),",
        "-- or psql -1 -v ON_ERROR_STOP=1 -f FILE.",
        "-- It stops first on a database that differs from the one it was rendered for, and locks "
        "the users table only",
        "-- for its last statements (below); every other lock wait is capped at "
        f"{FILE_LOCK_TIMEOUT}.",
        f"set local lock_timeout = '{FILE_LOCK_TIMEOUT}';",
        "",
        result.preconditions.strip() + ";",
        "",
    ]

    def ended(statement: str) -> str:
        text = statement.rstrip().rstrip(";").rstrip()
        # a statement whose last line is a comment gets its ';' on a line of its own
        return text + ("\n;" if "--" in text.rsplit("\n", 1)[-1] else ";")

    body = [ended(statement) for statement in main]
    if last and result.identity_lock:
        body += [LAST_AND_SHORT, ended(result.identity_lock)]
    elif last:
        body += ["-- Last: the takeover of legacy triggers (no lock on the users table)."]
    body += [ended(statement) for statement in last]
    return "\n".join(head) + "\n" + "\n\n".join(body) + "\n"


@command("Set up")
def install(
    ctx: typer.Context,
    strict: StrictOption = False,
    create_profile_table: CreateProfileTableOption = False,
    disabled: DisabledOption = False,
    schedule: ScheduleOption = None,
    cron_schedule: CronScheduleOption = "* * * * *",
    replace_trigger: ReplaceTriggerOption = None,
    keep_trigger: KeepTriggerOption = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Run the preflight alone and change nothing: the table "
            "against the mapping, and a rehearsal of the profile insert for sample "
            "users and each provider's sign-up shape (exit 0 all fine, 1 some would "
            "fail, 2 install would be refused).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Install even when the preflight refuses (sign-ups still "
            "commit; each profile failure is recorded).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Install profileguard after a preflight of the profile table. Running it again changes
    nothing.

    What locks the users table (the trigger, the takeover) runs last, in a short transaction
    that gives way to sign-ins and retries. The users table's owner is not needed. Beside
    another trigger that creates profiles it stops (exit 2, nothing changed) unless
    --replace-trigger or --keep-trigger names it."""
    if check:
        _preflight_output(
            installer.check(state(ctx).settings(), replace_triggers=replace_trigger or ()),
            as_json,
        )
        return
    _check_schedule(schedule)
    result = installer.install(
        state(ctx).settings(),
        strict=strict,
        enabled=False if disabled else None,
        create_profile_table=create_profile_table,
        cron_schedule=cron_schedule if schedule else None,
        replace_triggers=replace_trigger or (),
        keep_triggers=keep_trigger or (),
        force=force,
    )
    _install_output(result, as_json)


def _check_schedule(schedule: str | None) -> None:
    if schedule not in (None, "pg_cron"):
        raise ConfigError(
            f"--schedule: {schedule!r} is not a scheduler profileguard knows",
            hint="use --schedule pg_cron, or run 'profileguard worker'",
        )


@command("Set up", name="sql")
def sql_command(
    ctx: typer.Context,
    strict: StrictOption = False,
    create_profile_table: CreateProfileTableOption = False,
    disabled: DisabledOption = False,
    schedule: ScheduleOption = None,
    cron_schedule: CronScheduleOption = "* * * * *",
    replace_trigger: ReplaceTriggerOption = None,
    keep_trigger: KeepTriggerOption = None,
    uninstall: Annotated[
        bool,
        typer.Option(
            "--uninstall",
            help="Render the rollback instead: what 'profileguard uninstall' runs here (the "
            "triggers taken over given back, then every profileguard object removed).",
        ),
    ] = False,
) -> None:
    """Print what install would run here, as a migration file (supabase/migrations), running
    nothing: it only reads the catalog. When nothing would change, it prints no statement (and
    says so on stderr)."""
    _check_schedule(schedule)
    settings = state(ctx).settings()
    if uninstall:
        given = [
            name
            for name, value in (
                ("--strict", strict),
                ("--create-profile-table", create_profile_table),
                ("--disabled", disabled),
                ("--schedule", schedule),
                ("--replace-trigger", replace_trigger),
                ("--keep-trigger", keep_trigger),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"--uninstall renders the rollback: {', '.join(given)} does not apply to it",
                hint="run: profileguard sql --uninstall",
            )
        result = installer.render_uninstall(settings)
        if not result.changed:
            err.print("profileguard is not installed here: nothing to render.", highlight=False)
            return
    else:
        result = installer.render(
            settings,
            strict=strict,
            enabled=False if disabled else None,
            create_profile_table=create_profile_table,
            replace_triggers=replace_trigger or (),
            keep_triggers=keep_trigger or (),
            cron_schedule=cron_schedule if schedule else None,
        )
        if not result.changed:
            err.print(
                f"profileguard schema version {result.version_after} is installed here with this "
                "configuration: nothing would change, nothing to render.",
                highlight=False,
            )
            return
    sys.stdout.write(render_file(result, uninstall=uninstall))


@command("Set up")
def upgrade(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Apply pending schema migrations and regenerate the functions from the configuration."""
    result = installer.upgrade(state(ctx).settings())
    _install_output(result, as_json)


@command("Set up")
def uninstall(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove every profileguard object. Profiles and users are kept."""
    settings = state(ctx).settings()
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "uninstall needs confirmation", hint="run: profileguard uninstall --yes"
            )
        typer.confirm("Remove profileguard (profiles and users are kept)?", abort=True)
    notes: list[str] = []
    removed = installer.uninstall(settings, notes=notes)
    if as_json:
        print_json({"removed": removed, "notes": notes})
        return
    for note in notes:
        out.print(f"note: {note}", highlight=False)
    out.print(
        "profileguard removed; profiles kept."
        if removed
        else "profileguard was not installed; nothing to do."
    )


def _toggle(ctx: typer.Context, enabled: bool, as_json: bool) -> None:
    previous = installer.set_enabled(state(ctx).settings(), enabled)
    word = "enabled" if enabled else "disabled"
    if as_json:
        print_json({"enabled": enabled, "changed": previous != enabled})
    elif previous == enabled:
        out.print(f"profileguard was already {word}.")
    else:
        out.print(
            f"profileguard {word}: new signups {'get' if enabled else 'no longer get'} "
            "profiles from the trigger."
        )


@command("Set up")
def enable(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Turn the signup trigger on."""
    _toggle(ctx, True, as_json)


@command("Set up")
def disable(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Turn the signup trigger off without uninstalling."""
    _toggle(ctx, False, as_json)


class FailOn(StrEnum):
    """The least severe finding that makes `audit` exit non-zero."""

    info = "info"
    warning = "warning"
    error = "error"
    never = "never"


AUDIT_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
FAILING = {
    "info": ("error", "warning", "info"),
    "warning": ("error", "warning"),
    "error": ("error",),
    "never": (),
}


def _audit_view(report: Any) -> None:
    """Findings as a table, then each fix as a block of its own, unwrapped, to copy and run."""
    from rich.table import Table

    from profileguard.audit import SEVERITIES

    print_fields("profileguard state", report.state)
    table = Table(title="audit findings", title_justify="left", show_lines=True)
    for column in ("severity", "code", "finding", "evidence"):
        table.add_column(column, overflow="fold")
    for finding in report.findings:
        evidence = "\n".join(f"{k}: {v}" for k, v in finding.evidence.items())
        table.add_row(
            f"[{AUDIT_STYLE[finding.severity]}]{finding.severity}[/]",
            finding.code,
            finding.title,
            evidence,
        )
    out.print(table)
    for finding in report.findings:
        if finding.fix:
            print_sql(f"fix for {finding.code}:", finding.fix)
    counts = ", ".join(f"{report.count(s)} {s}" for s in SEVERITIES)
    out.print(f"{counts}.", highlight=False)


@command("Set up")
def audit(
    ctx: typer.Context,
    fail_on: Annotated[
        FailOn,
        typer.Option(
            "--fail-on",
            help=f"Exit {int(ExitCode.FINDINGS)} when a finding of this severity or worse "
            "exists (never: always exit 0).",
        ),
    ] = FailOn.error,
    as_json: JsonOption = False,
) -> None:
    """Find what is wrong with the database (read-only; works before and after install).
    Each fix is printed as a block to copy (and is the "fix" of each finding in --json)."""
    from profileguard.audit import run_audit

    report = run_audit(state(ctx).settings())
    if as_json:
        print_json(report.as_dict())
    else:
        _audit_view(report)
    if any(report.count(s) for s in FAILING[FailOn(fail_on).value]):
        raise typer.Exit(ExitCode.FINDINGS)

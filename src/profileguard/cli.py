"""The `profileguard` command: parses arguments, calls the library, renders the result.

Exit codes come from one table, `profileguard.errors.ExitCode` (listed in the README).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from profileguard import __version__, schema
from profileguard.client import ProfileGuard
from profileguard.config import Settings, load_settings
from profileguard.db import translate
from profileguard.errors import ConfigError, ExitCode, ProfileGuardError, UsageError
from profileguard.extras import require_extra
from profileguard.locking import LOCK_TIMEOUT_MS
from profileguard.reconcile import PassResult, Reconciler

app = typer.Typer(
    name="profileguard",
    help="Every user has a profile: install, run and inspect profileguard in a PostgreSQL "
    "or Supabase database. The database comes from --database-url, DATABASE_URL or "
    "profileguard.toml.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # errors are never cut into lines mid-text

P = ParamSpec("P")
R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
PoolerOption = Annotated[
    str | None,
    typer.Option(
        "--pooler",
        metavar="MODE",
        help="'transaction' behind a transaction-mode pooler (Supavisor port 6543, PgBouncer "
        "pool_mode=transaction): no LISTEN, no session lock, nothing prepared. 'session' for a "
        "direct connection or a session-mode pooler (default: PROFILEGUARD_POOLER, "
        "[database] pooler).",
    ),
]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Let a profile failure fail the signup (default: never).")
]
CreateProfileTableOption = Annotated[
    bool,
    typer.Option(
        "--create-profile-table", help="Create a Supabase-style profile table when none exists."
    ),
]
DisabledOption = Annotated[
    bool, typer.Option("--disabled", help="Install with the trigger off (enable it later).")
]
ReplaceTriggerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--replace-trigger",
        metavar="NAME",
        help="Take over from this existing profile-creating trigger on the users table, and "
        "enable profileguard in the same step: its own function's body becomes a no-op, or "
        "(when this role does not own the function) the trigger is re-created WHEN (false); the "
        "original is saved and uninstall restores it. Repeatable.",
    ),
]


@dataclass
class State:
    """Options given before the command."""

    database_url: str | None = None
    config: Path | None = None

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(self.config, database_url=self.database_url, **overrides)


def _state(ctx: typer.Context) -> State:
    obj = ctx.obj
    return obj if isinstance(obj, State) else State()


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print errors (driver errors translated) as "error: … / hint: …" and exit with their code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ProfileGuardError, psycopg.Error) as exc:
            exc = translate(exc)
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.sqlstate:
                err.print(f"sqlstate: {exc.sqlstate}", highlight=False)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_fields(title: str, data: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        table.add_row(key.replace("_", " "), "" if value is None else str(value))
    out.print(table)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"profileguard {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            "-d",
            help="PostgreSQL URL (default: PROFILEGUARD_DATABASE_URL, DATABASE_URL, "
            "profileguard.toml, then the PG* variables).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Configuration file (default: ./profileguard.toml)."
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Print the version and exit.", is_eager=True,
                     callback=_print_version),
    ] = False,
) -> None:
    """Global options."""
    ctx.obj = State(database_url, config)


def _install_output(result: schema.InstallResult, as_json: bool) -> None:
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
        out.print(f"profileguard schema version {result.version_after} already installed; "
                  "nothing changed.")
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
        for failure in report.failures:
            out.print(f"would fail: {failure['subject']}: SQLSTATE {failure['sqlstate']}: "
                      f"{failure['message']}", highlight=False, soft_wrap=True)
        out.print(f"preflight: {report.rehearsed} profiles rehearsed, "
                  f"{len(report.failures)} would fail.", highlight=False)
    if report.refusals:
        raise typer.Exit(2)
    if report.failures:
        raise typer.Exit(1)


def render_file(result: schema.InstallResult) -> str:
    """The migration file `profileguard sql` prints: guard first, identity-table DDL last."""
    main = result.statements[: len(result.statements) - result.identity_statements]
    last = result.statements[len(main):]
    head = [
        f"-- profileguard {__version__}: what `profileguard install` runs, rendered by "
        "`profileguard sql` (nothing was run to render it).",
        "-- Apply it in one transaction: `supabase db push` (one transaction per migration "
        "file), or psql -1 -v ON_ERROR_STOP=1 -f FILE.",
        "-- It stops before changing anything when the tables or profileguard's schema version "
        "differ from those it was rendered for.",
        "-- Each lock wait is capped, so sign-ins never queue long behind it: if it stops with "
        "SQLSTATE 55P03 (lock timeout), apply it again.",
        f"set lock_timeout = '{LOCK_TIMEOUT_MS}ms';",
        "",
        result.guard.strip() + ";",
        "",
    ]
    def ended(statement: str) -> str:
        text = statement.rstrip().rstrip(";").rstrip()
        # a statement whose last line is a comment gets its ';' on a line of its own
        return text + ("\n;" if "--" in text.rsplit("\n", 1)[-1] else ";")

    body = [ended(statement) for statement in main]
    if last:
        body += ["-- Last and short: these statements lock the users table, which every "
                 "sign-in updates."]
        body += [ended(statement) for statement in last]
    return "\n".join(head) + "\n" + "\n\n".join(body) + "\n"


@app.command(rich_help_panel="Set up")
@handle_errors
def install(
    ctx: typer.Context,
    strict: StrictOption = False,
    create_profile_table: CreateProfileTableOption = False,
    disabled: DisabledOption = False,
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            help="'pg_cron': also schedule the in-database sweep profileguard.reconcile() "
            "(for hosts where no worker process can run).",
        ),
    ] = None,
    cron_schedule: Annotated[
        str, typer.Option("--cron-schedule", help="When the pg_cron sweep runs.")
    ] = "* * * * *",
    replace_trigger: ReplaceTriggerOption = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Run the preflight alone and change nothing: the table "
                     "against the mapping, and a rehearsal of the profile insert for sample "
                     "users and each provider's sign-up shape (exit 0 all fine, 1 some would "
                     "fail, 2 install would be refused)."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Install even when the preflight refuses (sign-ups still "
                     "commit; each profile failure is recorded)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Install profileguard after a preflight of the profile table. Running it again changes
    nothing.

    What locks the users table (the trigger, the takeover) runs last, in a short transaction
    that gives way to sign-ins and retries. The users table's owner is not needed."""
    if check:
        _preflight_output(schema.check(_state(ctx).settings()), as_json)
        return
    if schedule not in (None, "pg_cron"):
        raise ConfigError(
            f"--schedule: {schedule!r} is not a scheduler profileguard knows",
            hint="use --schedule pg_cron, or run 'profileguard worker'",
        )
    result = schema.install(
        _state(ctx).settings(),
        strict=strict,
        enabled=False if disabled else None,
        create_profile_table=create_profile_table,
        cron_schedule=cron_schedule if schedule else None,
        replace_triggers=replace_trigger or (),
        force=force,
    )
    _install_output(result, as_json)


@app.command(name="sql", rich_help_panel="Set up")
@handle_errors
def sql_command(
    ctx: typer.Context,
    strict: StrictOption = False,
    create_profile_table: CreateProfileTableOption = False,
    disabled: DisabledOption = False,
    replace_trigger: ReplaceTriggerOption = None,
) -> None:
    """Print what install would run here, as a migration file (supabase/migrations), running
    nothing: it only reads the catalog."""
    result = schema.render(
        _state(ctx).settings(),
        strict=strict,
        enabled=False if disabled else None,
        create_profile_table=create_profile_table,
        replace_triggers=replace_trigger or (),
    )
    sys.stdout.write(render_file(result))


@app.command(rich_help_panel="Set up")
@handle_errors
def upgrade(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Apply pending schema migrations and regenerate the functions from the configuration."""
    result = schema.upgrade(_state(ctx).settings())
    _install_output(result, as_json)


@app.command(rich_help_panel="Set up")
@handle_errors
def uninstall(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove every profileguard object. Profiles and users are kept."""
    settings = _state(ctx).settings()
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "uninstall needs confirmation", hint="run: profileguard uninstall --yes"
            )
        typer.confirm("Remove profileguard (profiles and users are kept)?", abort=True)
    notes: list[str] = []
    removed = schema.uninstall(settings, notes=notes)
    if as_json:
        print_json({"removed": removed, "notes": notes})
        return
    for note in notes:
        out.print(f"note: {note}", highlight=False)
    out.print("profileguard removed; profiles kept." if removed else "profileguard was not "
              "installed; nothing to do.")


def _toggle(ctx: typer.Context, enabled: bool, as_json: bool) -> None:
    previous = schema.set_enabled(_state(ctx).settings(), enabled)
    word = "enabled" if enabled else "disabled"
    if as_json:
        print_json({"enabled": enabled, "changed": previous != enabled})
    elif previous == enabled:
        out.print(f"profileguard was already {word}.")
    else:
        out.print(f"profileguard {word}: new signups {'get' if enabled else 'no longer get'} "
                  "profiles from the trigger.")


@app.command(rich_help_panel="Set up")
@handle_errors
def enable(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Turn the signup trigger on."""
    _toggle(ctx, True, as_json)


@app.command(rich_help_panel="Set up")
@handle_errors
def disable(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Turn the signup trigger off without uninstalling."""
    _toggle(ctx, False, as_json)


@app.command(rich_help_panel="Repair")
@handle_errors
def ensure(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="The user's id (key of the identity table).")],
    as_json: JsonOption = False,
) -> None:
    """Make sure one user has a profile, creating it if missing, and print it."""
    with ProfileGuard(_state(ctx).settings(), max_size=1, source="cli") as guard:
        result = guard.ensure_result(user_id)
    if as_json:
        print_json(
            {"user_id": result.user_id, "created": result.created, "path": result.path,
             "profile": result.profile}
        )
        return
    verb = "created" if result.created else "already present"
    print_fields(f"profile of {result.user_id} ({verb})", result.profile)


@app.command(rich_help_panel="Observe")
@handle_errors
def version(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Print the package version and, when a database is configured, the installed schema."""
    info: dict[str, Any] = {"package_version": __version__}
    try:
        settings = _state(ctx).settings()
        settings.conninfo()
    except ProfileGuardError:
        settings = None
    if settings is not None:
        info = schema.describe(settings)
    if as_json:
        print_json(info)
    else:
        print_fields("profileguard", info)


@app.command(rich_help_panel="Try it")
@handle_errors
def demo(
    ctx: typer.Context,
    users: Annotated[int, typer.Option(help="Existing users to start from.", min=100)] = 10_000,
    signups: Annotated[int, typer.Option(help="Sign-ups in each burst.", min=20)] = 500,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep the dashboard running at the end.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port of the dashboard with --serve.")] = 8787,
    as_json: JsonOption = False,
) -> None:
    """Run the demo on an embedded PostgreSQL (or on --database-url, in a scratch database):
    the legacy trigger, audit, install, backfill, sign-ups with faults and the worker."""
    if serve:
        require_extra("server", "profileguard demo --serve")
    from profileguard.demo import run_demo

    console = Console(stderr=True) if as_json else out
    figures = run_demo(console, database_url=_state(ctx).database_url, users=users,
                       signups=signups, serve=serve, port=port)
    if as_json:
        print_json(figures)


def _reconciler(ctx: typer.Context, pooler: str | None = None, **options: Any) -> Reconciler:
    return Reconciler(_state(ctx).settings(pooler=pooler), **options)


def _print_pass(title: str, result: PassResult, as_json: bool) -> None:
    if as_json:
        print_json(result.as_dict())
    else:
        print_fields(title, result.as_dict())


@app.command(rich_help_panel="Repair")
@handle_errors
def worker(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="One full sweep, print a summary and exit.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Users per repair transaction.")
    ] = 1000,
    max_attempts: Annotated[
        int,
        typer.Option("--max-attempts", min=1, help="Failed attempts before a user is quarantined."),
    ] = 5,
    incremental_interval: Annotated[
        float, typer.Option("--incremental-interval", min=0.05, help="Seconds between "
                            "incremental sweeps (new failures, due retries).")
    ] = 5.0,
    full_interval: Annotated[
        float, typer.Option("--full-interval", min=0.1, help="Seconds between full sweeps.")
    ] = 300.0,
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="Name in profileguard.workers "
                                 "(default host:pid:random).")
    ] = None,
    pooler: PoolerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Repair users without a profile: LISTEN for failures (polling only with --pooler
    transaction), sweep periodically. Runs until SIGTERM/SIGINT (finishing the batch in hand);
    several workers may run at once."""
    reconciler = _reconciler(
        ctx, pooler, worker_id=worker_id, batch_size=batch_size, max_attempts=max_attempts,
        incremental_interval=incremental_interval, full_interval=full_interval,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        err.print(f"{signal.Signals(signum).name}: finishing the batch in hand…")
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        if once:
            _print_pass("worker pass", reconciler.run_once(stop), as_json)
            return
        if not as_json:
            err.print(f"profileguard worker {reconciler.worker_id} started; Ctrl-C stops it.")
        reconciler.run_forever(stop)
        if as_json:
            print_json(reconciler.stats)
    finally:
        reconciler.close()


@app.command(rich_help_panel="Repair")
@handle_errors
def retry(
    ctx: typer.Context,
    user_ids: Annotated[
        list[str] | None, typer.Argument(help="Users to re-drive (ids of the identity table).")
    ] = None,
    all_quarantined: Annotated[
        bool, typer.Option("--all-quarantined", help="Re-drive every quarantined user.")
    ] = False,
    pooler: PoolerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Clear the attempts and quarantine of users and repair them now (after fixing the cause)."""
    if not user_ids and not all_quarantined:
        raise ConfigError(
            "nothing to retry", hint="pass USER_ID… or --all-quarantined"
        )
    settings = _state(ctx).settings(pooler=pooler)
    settings.require_pooler_mode("retry")
    reconciler = Reconciler(settings)
    try:
        result = reconciler.retry(user_ids or (), all_quarantined=all_quarantined)
    finally:
        reconciler.close()
    _print_pass("retry", result, as_json)


@app.command(rich_help_panel="Repair")
@handle_errors
def drift(
    ctx: typer.Context,
    fix: Annotated[
        bool, typer.Option("--fix", help="Also bring every drifted profile in step now.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Profiles whose follow/fill_empty columns disagree with their user (and soft-deleted users
    whose profile is not redacted): count, by column, a sample. Read-only unless --fix."""
    from profileguard.drift import DriftRepair, DriftResult, report

    settings = _state(ctx).settings()
    fixed = None
    if fix:
        repair = DriftRepair(settings)
        total = DriftResult()
        try:
            step = repair.run_full_step(force=True)
            while step.checked:  # until the pass completes (then the next one is not due)
                total.add(step)
                step = repair.run_full_step()
        finally:
            repair.close()
        fixed = total.as_dict()
    result = report(settings).as_dict()
    if fixed is not None:
        result["fixed"] = fixed
    if as_json:
        print_json(result)
        return
    shown = {k: v for k, v in result.items() if k != "sample"}
    print_fields("profiles out of step with their users", shown)
    for item in result["sample"]:
        out.print(f"{item['user_id']}: {', '.join(item['columns'])}", highlight=False)
    if result["drifted"] and not fix:
        out.print("fix: profileguard drift --fix (or let the worker repair them)",
                  highlight=False)


@app.command(rich_help_panel="Repair")
@handle_errors
def prune(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the profiles without a user; remove nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove profiles whose user no longer exists (run with --dry-run first)."""
    from profileguard.prune import prune as run_prune

    result = run_prune(_state(ctx).settings(), dry_run=dry_run)
    if as_json:
        print_json(result.as_dict())
        return
    for user_id in result.orphans:
        out.print(user_id, highlight=False)
    if dry_run:
        out.print(f"{len(result.orphans)} profile(s) without a user; remove them with: "
                  "profileguard prune", highlight=False)
    else:
        out.print(f"removed {result.removed} profile(s) without a user.", highlight=False)


# ------------------------------------------------------------------------------------- audit

AUDIT_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


@app.command(rich_help_panel="Set up")
@handle_errors
def audit(
    ctx: typer.Context,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            help=f"Exit {int(ExitCode.FINDINGS)} when a finding of this severity or worse "
            "exists: error, warning or never.",
        ),
    ] = "error",
    as_json: JsonOption = False,
) -> None:
    """Find what is wrong with the database (read-only; works before and after install)."""
    from profileguard.audit import SEVERITIES, run_audit

    if fail_on not in ("error", "warning", "never"):
        raise UsageError(
            f"--fail-on: {fail_on!r} is not a severity", hint="use error, warning or never"
        )
    report = run_audit(_state(ctx).settings())
    if as_json:
        print_json(report.as_dict())
    else:
        print_fields("profileguard state", report.state)
        table = Table(title="audit findings", title_justify="left", show_lines=True)
        for column in ("severity", "code", "finding", "evidence", "fix"):
            table.add_column(column, overflow="fold")
        for finding in report.findings:
            evidence = "\n".join(f"{k}: {v}" for k, v in finding.evidence.items())
            table.add_row(
                f"[{AUDIT_STYLE[finding.severity]}]{finding.severity}[/]",
                finding.code, finding.title, evidence, finding.fix or "",
            )
        out.print(table)
        counts = ", ".join(f"{report.count(s)} {s}" for s in SEVERITIES)
        out.print(f"{counts}.", highlight=False)
    limit = {"error": ("error",), "warning": ("error", "warning"), "never": ()}[fail_on]
    if any(report.count(s) for s in limit):
        raise typer.Exit(ExitCode.FINDINGS)


# --- register: an admin-created user, with its profile ------------------------------------------


@app.command(rich_help_panel="Repair")
@handle_errors
def register(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The new user's email.")],
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from standard input "
                     "(never from the command line). Without it the user is passwordless "
                     "(magic link / OTP)."),
    ] = False,
    meta: Annotated[
        str | None,
        typer.Option("--meta", help='User metadata, a JSON object: {"full_name": "Ada"}.'),
    ] = None,
    confirmed: Annotated[
        bool, typer.Option("--confirmed", help="Mark the email as confirmed.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a user in auth.users (as Supabase Auth does) and its profile, in one transaction."""
    from profileguard.errors import InvalidRegistrationError

    metadata: Any = None
    if meta is not None:
        try:
            metadata = json.loads(meta)
        except json.JSONDecodeError as exc:
            raise InvalidRegistrationError(
                f"--meta is not JSON: {exc}", hint='pass an object such as {"full_name": "Ada"}'
            ) from None
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    with ProfileGuard(_state(ctx).settings(), max_size=1, source="cli") as guard:
        result = guard.register(
            email=email, password=password, metadata=metadata, email_confirmed=confirmed
        )
    if as_json:
        print_json(result.as_dict())
        return
    print_fields(f"user {result.id} ({result.user['email']})", result.profile)


# ---------------------------------------------------------------- observability: status, serve


def _status_view(result: dict[str, Any]) -> None:
    s = result["stats"]
    colour = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}[result["status"]]
    figures = Table(title=f"profileguard status: [bold {colour}]{result['status']}[/]",
                    show_header=False, title_justify="left")
    figures.add_column(style="bold")
    figures.add_column()
    rate = s.get("success_rate_pct")
    backfill = s.get("backfill") or {}
    rows = {
        "users": f"{s['users']:,}" + ("" if s.get("users_exact") else " (since last count)"),
        "profiles": f"{s['profiles']:,}",
        "missing": f"{s['missing']:,}"
        + (f" (oldest {s['oldest_missing_age_seconds']:.0f}s)" if s["missing"] else ""),
        "coverage": f"{s['coverage_pct']:.2f}%",
        "trigger success": "n/a" if rate is None else
        f"{rate:.2f}% ({s['trigger_failures_window']} failures / "
        f"{s.get('signups_window') or 0} signups, {s['window_covered_seconds']:.0f}s)",
        "failures by category": ", ".join(f"{k} {v}" for k, v in
                                          s["failures_by_category_total"].items()) or "none",
        "repairs": f"{s['repairs_total']:,} ({s['repairs_window']} in window)",
        "quarantined": f"{s['quarantined']:,} ({s['retrying']} retrying)",
        "workers": f"{s['live_workers']} live of {len(s['workers'])}"
        + "".join(f"; {w['worker_id']} {w['heartbeat_age_seconds']:.0f}s ago"
                  for w in s["workers"][:5])
        + f" (repair lag {s['repair_lag_seconds']:.0f}s)",
        "backfill": f"{backfill.get('state')} {backfill.get('progress_pct') or 0}%"
        + (" STALLED" if backfill.get("stalled") else "") if backfill else "none",
        "drift": f"{s.get('drift_pending') or 0} pending"
        + (f"; last full pass found {s['drift_full_pass_found']} of "
           f"{s['drift_full_pass_scanned']}" if s.get("drift_full_pass_at") else "")
        + f"; {s.get('sync_failures_hour') or 0} sync failures in the last hour",
        "counted": f"{s['count_age_seconds']:.0f}s ago (full sweep {s['refresh_ms']} ms)",
    }
    for key, value in rows.items():
        figures.add_row(key, value)
    out.print(figures)
    checks = Table(title="checks", title_justify="left")
    for column in ("check", "status", "detail"):
        checks.add_column(column)
    style = {"ok": "green", "warning": "yellow", "critical": "red"}
    for check in result["checks"]:
        checks.add_row(check["name"], f"[{style[check['status']]}]{check['status']}[/]",
                       check["message"])
    out.print(checks)


STATUS_HELP = (
    "Coverage, missing profiles, failures, repairs, quarantine, workers and backfill at a "
    f"glance. Exit code: {int(ExitCode.OK)} healthy, {int(ExitCode.DEGRADED)} degraded, "
    f"{int(ExitCode.UNHEALTHY)} unhealthy, {int(ExitCode.NOT_INSTALLED)} not installed, "
    f"{int(ExitCode.UNREACHABLE)} unreachable."
)


@app.command(rich_help_panel="Observe", help=STATUS_HELP)
@handle_errors
def status(
    ctx: typer.Context,
    refresh: Annotated[
        bool | None,
        typer.Option(
            "--refresh/--no-refresh",
            help="Recount everything first (a full scan), or never; default: only when the "
            "last count is older than alerts.refresh_interval_seconds.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Coverage, health verdict and figures; the exit code tells the verdict (STATUS_HELP)."""
    from profileguard import monitor

    older = {True: 0.0, False: float("inf"), None: None}[refresh]
    result = monitor.status(_state(ctx).settings(), refresh_if_older_than=older)
    if as_json:
        print_json(result)
    else:
        _status_view(result)
    raise typer.Exit(result["exit_code"])


@app.command(rich_help_panel="Observe")
@handle_errors
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind (default: localhost only).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8787,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="PROFILEGUARD_API_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on /metrics and /api/* (the dashboard "
            "takes it as #token=TOKEN in its address).",
        ),
    ] = None,
    alerts: Annotated[
        bool, typer.Option("--alerts/--no-alerts", help="Evaluate alert rules in the background.")
    ] = True,
    insecure_no_token: Annotated[
        bool,
        typer.Option("--insecure-no-token", help="Serve on a non-loopback address without a "
                     "token (only behind a proxy that checks access)."),
    ] = False,
    show_details: Annotated[
        bool,
        typer.Option("--show-details", help="Show stored failure messages in full in "
                     "/api/events and /api/quarantine (default: SQLSTATE, constraint and "
                     "column names only)."),
    ] = False,
) -> None:
    """Serve the dashboard (/), /metrics (Prometheus), /api/status, /api/events, /healthz,
    /readyz and the API docs (/docs). Read-only. A non-loopback --host needs a token."""
    from profileguard.web import serve as run_server  # without [server]: a clear error

    if token is None and os.environ.get("PROFILEGUARD_API_TOKEN") is not None:
        token = os.environ["PROFILEGUARD_API_TOKEN"]  # set but empty: refused, not ignored
    run_server(_state(ctx).settings(), host=host, port=port, token=token, alerts=alerts,
               allow_no_token=insecure_no_token, show_details=show_details)


# ---------------------------------------------------------------- backfill


def _backfill_progress(as_json: bool) -> tuple[Any, Callable[[Any], None]]:
    """A rich progress bar on a terminal; plain lines every few seconds otherwise (stderr)."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if err.is_terminal:
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]:,.0f} rows/s"),
            TextColumn("created {task.fields[created]:,}  failed {task.fields[failed]:,}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            transient=as_json,
        )
        task = bar.add_task("backfill", total=None, rate=0.0, created=0, failed=0)

        def update(p: Any) -> None:
            bar.update(
                task,
                completed=p.scanned,
                total=max(p.total_estimate, p.scanned),
                rate=p.rows_per_second,
                created=p.created,
                failed=p.failed,
                description=f"{'dry run' if p.dry_run else 'backfill'} #{p.run_id}",
            )

        return bar, update

    last = [0.0]

    def line(p: Any) -> None:
        now = time.monotonic()
        if now - last[0] < 5.0:
            return
        last[0] = now
        total = max(p.total_estimate, p.scanned)
        eta = (total - p.scanned) / p.rows_per_second if p.rows_per_second else 0.0
        err.print(
            f"backfill #{p.run_id}: scanned {p.scanned}/{total} created {p.created} "
            f"failed {p.failed} batches {p.batches} batch size {p.batch_size} "
            f"{p.rows_per_second:.0f} rows/s ETA {eta:.0f}s",
            highlight=False,
            soft_wrap=True,
        )

    return None, line


@app.command(rich_help_panel="Repair")
@handle_errors
def backfill(
    ctx: typer.Context,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Change nothing; report what would be created or fail."),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the last interrupted run from its checkpoint."),
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="First batch size (default 1000, or the resumed run's)."),
    ] = None,
    min_batch_size: Annotated[int, typer.Option("--min-batch-size")] = 100,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size")] = 100_000,
    target_seconds: Annotated[
        float, typer.Option("--target-seconds", help="Batch duration the batch size aims at.")
    ] = 0.5,
    max_rows_per_second: Annotated[
        float | None, typer.Option("--max-rows-per-second", help="Throttle (users scanned/s).")
    ] = None,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", help="Seconds a batch may wait for a lock.")
    ] = 2.0,
    statement_timeout: Annotated[
        float, typer.Option("--statement-timeout", help="Seconds a batch statement may run.")
    ] = 30.0,
    sample: Annotated[
        int, typer.Option("--sample", help="Profiles shown by --dry-run.", min=0)
    ] = 10,
    workers: Annotated[
        int,
        typer.Option("--workers", help="Connections inserting batches at once (default 2: "
                     "about the speed of one bulk INSERT; 1 = the lightest on the database)."),
    ] = 2,
    pooler: PoolerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create the missing profiles of existing users: batched, throttled, resumable."""
    import signal
    import threading

    from profileguard.backfill import Options, run_backfill

    options = Options(
        dry_run=dry_run,
        resume=resume,
        batch_size=batch_size,
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
        target_seconds=target_seconds,
        max_rows_per_second=max_rows_per_second,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        sample=sample,
        workers=workers,
    )
    settings = _state(ctx).settings(pooler=pooler)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err.print("stopping after the current batch (again to stop now)…")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar, update = _backfill_progress(as_json)
    try:
        if bar is not None:
            with bar:
                report = run_backfill(settings, options, progress=update, stop_event=stop)
        else:
            report = run_backfill(settings, options, progress=update, stop_event=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    data = report.as_dict()
    if as_json:
        print_json(data)
    else:
        shown = {k: v for k, v in data.items() if k not in ("failures", "sample")}
        title = f"{'dry run' if report.dry_run else 'backfill'} #{report.run_id}: {report.state}"
        print_fields(title, shown)
        for failure in report.failures:
            out.print(
                f"{'would fail' if report.dry_run else 'failed'}: {failure['user_id']} "
                f"{failure['sqlstate']} {failure['message']}",
                highlight=False,
                soft_wrap=True,
            )
        if report.failures_truncated:
            out.print(f"… {report.failed - len(report.failures)} more", highlight=False)
        for profile in report.sample:
            out.print_json(data=profile)
    if report.state == "interrupted":
        err.print("interrupted; continue with: profileguard backfill --resume"
                  + (" --dry-run" if report.dry_run else ""), highlight=False)
        raise typer.Exit(ExitCode.INTERRUPTED)


def main() -> None:
    """Console-script entry point."""
    app()

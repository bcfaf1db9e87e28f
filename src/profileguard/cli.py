"""The `profileguard` command: parses arguments, calls the library, renders the result.

Exit codes: 0 success, 1 error, 2 bad usage or configuration, 3 not installed,
4 database unreachable, 5 user not found.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from profileguard import __version__, schema
from profileguard.client import ProfileGuard
from profileguard.config import Settings, load_settings
from profileguard.errors import ProfileGuardError

app = typer.Typer(
    name="profileguard",
    help="Every user has a profile: install, run and inspect profileguard in a PostgreSQL "
    "or Supabase database. The database comes from --database-url, DATABASE_URL or "
    "profileguard.toml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


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
    """Print ProfileGuardErrors as 'error: … / hint: …' and exit with their code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ProfileGuardError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            if exc.sqlstate:
                err.print(f"sqlstate: {exc.sqlstate}", highlight=False)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
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
) -> None:
    """Global options."""
    ctx.obj = State(database_url, config)


def _install_output(result: schema.InstallResult, as_json: bool, print_sql: bool) -> None:
    if print_sql:
        sys.stdout.write(";\n\n".join(result.statements) + ";\n")
        return
    if as_json:
        print_json(result.as_dict())
        return
    if result.changed:
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


@app.command()
@handle_errors
def install(
    ctx: typer.Context,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Let a profile failure fail the signup (default: never)."),
    ] = False,
    create_profile_table: Annotated[
        bool,
        typer.Option(
            "--create-profile-table",
            help="Create a Supabase-style profile table when none exists.",
        ),
    ] = False,
    disabled: Annotated[
        bool,
        typer.Option("--disabled", help="Install with the trigger off (enable it later)."),
    ] = False,
    print_sql: Annotated[
        bool, typer.Option("--print-sql", help="Print the SQL and change nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Install profileguard (in one transaction). Running it again changes nothing."""
    result = schema.install(
        _state(ctx).settings(),
        strict=strict,
        enabled=False if disabled else None,
        create_profile_table=create_profile_table,
        dry_run=print_sql,
    )
    _install_output(result, as_json, print_sql)


@app.command()
@handle_errors
def upgrade(
    ctx: typer.Context,
    print_sql: Annotated[
        bool, typer.Option("--print-sql", help="Print the SQL and change nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Apply pending schema migrations and regenerate the functions from the configuration."""
    result = schema.upgrade(_state(ctx).settings(), dry_run=print_sql)
    _install_output(result, as_json, print_sql)


@app.command()
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
            raise ProfileGuardError(
                "uninstall needs confirmation", hint="run: profileguard uninstall --yes"
            )
        typer.confirm("Remove profileguard (profiles and users are kept)?", abort=True)
    removed = schema.uninstall(settings)
    if as_json:
        print_json({"removed": removed})
    else:
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


@app.command()
@handle_errors
def enable(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Turn the signup trigger on."""
    _toggle(ctx, True, as_json)


@app.command()
@handle_errors
def disable(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Turn the signup trigger off without uninstalling."""
    _toggle(ctx, False, as_json)


@app.command()
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


@app.command()
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


@app.command()
@handle_errors
def demo(
    ctx: typer.Context,
    signups: Annotated[int, typer.Option(help="How many sign-ups to make.", min=1)] = 300,
) -> None:
    """Run the demo on an embedded PostgreSQL (or on --database-url, in a scratch database)."""
    from profileguard.demo import run_demo

    run_demo(out, database_url=_state(ctx).database_url, signups=signups)


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


@app.command()
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
        typer.Option("--workers", help="Connections inserting batches at once (1 = one at a "
                     "time, the lightest on the database)."),
    ] = 1,
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
    options.check()
    settings = _state(ctx).settings()
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
        raise typer.Exit(130)


def main() -> None:
    """Console-script entry point."""
    app()

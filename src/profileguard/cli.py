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


@app.command()
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
    """Coverage, missing profiles, failures, repairs, quarantine, workers and backfill at a
    glance. Exit code: 0 healthy, 6 degraded, 7 unhealthy, 3 not installed, 4 unreachable."""
    from profileguard import monitor

    older = {True: 0.0, False: float("inf"), None: None}[refresh]
    result = monitor.status(_state(ctx).settings(), refresh_if_older_than=older)
    if as_json:
        print_json(result)
    else:
        _status_view(result)
    raise typer.Exit(result["exit_code"])


@app.command()
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
) -> None:
    """Serve the dashboard (/), /metrics (Prometheus), /api/status, /api/events, /healthz,
    /readyz and the API docs (/docs). Read-only."""
    from profileguard.web import serve as run_server

    run_server(_state(ctx).settings(), host=host, port=port, token=token, alerts=alerts)


def main() -> None:
    """Console-script entry point."""
    app()

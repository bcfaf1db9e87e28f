"""Observe and try-it commands: version, status, serve, demo."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from profileguard import __version__
from profileguard.cli.app import command, state
from profileguard.cli.options import JsonOption
from profileguard.cli.render import duration, out, print_fields, print_json
from profileguard.errors import ExitCode, ProfileGuardError
from profileguard.extras import require_extra
from profileguard.install import describe


@command("Observe")
def version(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Print the package version and, when a database is configured, the installed schema."""
    info: dict[str, Any] = {"package_version": __version__}
    try:
        settings = state(ctx).settings()
        settings.conninfo()
    except ProfileGuardError:
        settings = None
    if settings is not None:
        info = describe(settings)
    if as_json:
        print_json(info)
    else:
        print_fields("profileguard", info)


@command("Try it")
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
    figures = run_demo(
        console,
        database_url=state(ctx).database_url,
        users=users,
        signups=signups,
        serve=serve,
        port=port,
    )
    if as_json:
        print_json(figures)


def _status_view(result: dict[str, Any]) -> None:
    s = result["stats"]
    colour = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}[result["status"]]
    figures = Table(
        title=f"profileguard status: [bold {colour}]{result['status']}[/]",
        show_header=False,
        title_justify="left",
    )
    figures.add_column(style="bold")
    figures.add_column()
    rate = s.get("success_rate_pct")
    backfill = s.get("backfill") or {}
    rows = {
        "users": f"{s['users']:,}" + ("" if s.get("users_exact") else " (since last count)"),
        "profiles": f"{s['profiles']:,}",
        "missing": f"{s['missing']:,}"
        + (f" (oldest {duration(s['oldest_missing_age_seconds'])})" if s["missing"] else ""),
        "coverage": f"{s['coverage_pct']:.2f}%",
        "trigger success": "n/a"
        if rate is None
        # The statistics collector counts inserts, rolled-back ones included: say so.
        else f"{rate:.2f}% ({s['trigger_failures_window']} failures / "
        f"{s.get('signups_window') or 0} inserts, rolled-back ones included, "
        f"{duration(s['window_covered_seconds'])})",
        "failures by category": ", ".join(
            f"{k} {v}" for k, v in s["failures_by_category_total"].items()
        )
        or "none",
        "repairs": f"{s['repairs_total']:,} ({s['repairs_window']} in window)",
        "quarantined": f"{s['quarantined']:,} ({s['retrying']} retrying)",
        "workers": f"{s['live_workers']} live of {len(s['workers'])}"
        + "".join(
            f"; {w['worker_id']} {duration(w['heartbeat_age_seconds'])} ago"
            for w in s["workers"][:5]
        )
        + f" (repair lag {duration(s['repair_lag_seconds'])})",
        "backfill": f"{backfill.get('state')} {backfill.get('progress_pct') or 0}%"
        + (" STALLED" if backfill.get("stalled") else "")
        if backfill
        else "none",
        "drift": f"{s.get('drift_pending') or 0} pending"
        + (
            f"; last full pass found {s['drift_full_pass_found']} of {s['drift_full_pass_scanned']}"
            if s.get("drift_full_pass_at")
            else ""
        )
        + f"; {s.get('sync_failures_hour') or 0} sync failures in the last hour",
        "counted": f"{duration(s['count_age_seconds'])} ago (full sweep {s['refresh_ms']} ms)",
    }
    for key, value in rows.items():
        figures.add_row(key, value)
    out.print(figures)
    checks = Table(title="checks", title_justify="left")
    for column in ("check", "status", "detail"):
        checks.add_column(column)
    style = {"ok": "green", "warning": "yellow", "critical": "red"}
    for check in result["checks"]:
        checks.add_row(
            check["name"], f"[{style[check['status']]}]{check['status']}[/]", check["message"]
        )
    out.print(checks)


STATUS_HELP = (
    "Coverage, missing profiles, failures, repairs, quarantine, workers and backfill at a "
    f"glance. Exit code: {int(ExitCode.OK)} healthy, {int(ExitCode.DEGRADED)} degraded, "
    f"{int(ExitCode.UNHEALTHY)} unhealthy, {int(ExitCode.NOT_INSTALLED)} not installed, "
    f"{int(ExitCode.UNREACHABLE)} unreachable."
)


@command("Observe", help=STATUS_HELP)
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
    from profileguard import observe

    older = {True: 0.0, False: float("inf"), None: None}[refresh]
    result = observe.status(state(ctx).settings(), refresh_if_older_than=older)
    if as_json:
        print_json(result)
    else:
        _status_view(result)
    raise typer.Exit(result["exit_code"])


@command("Observe")
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
            "takes it as #token=TOKEN in its address); at least 32 characters off loopback.",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            metavar="NAME",
            envvar="PROFILEGUARD_ALLOWED_HOSTS",
            help="Also serve requests whose Host is this name (a DNS name, or the one a proxy "
            "passes on). Without it: the --host address, localhost when bound to loopback, and "
            "any IP address when bound to 0.0.0.0 or ::. Repeatable; PROFILEGUARD_ALLOWED_HOSTS "
            "takes names separated by commas or spaces.",
        ),
    ] = None,
    alerts: Annotated[
        bool, typer.Option("--alerts/--no-alerts", help="Evaluate alert rules in the background.")
    ] = True,
    insecure_no_token: Annotated[
        bool,
        typer.Option(
            "--insecure-no-token",
            help="Serve on a non-loopback address without a "
            "token (only behind a proxy that checks access).",
        ),
    ] = False,
    show_details: Annotated[
        bool,
        typer.Option(
            "--show-details",
            help="Show stored failure messages in full in "
            "/api/events and /api/quarantine (default: SQLSTATE, constraint and "
            "column names only).",
        ),
    ] = False,
) -> None:
    """Serve the dashboard (/), /metrics (Prometheus), /api/status, /api/events, /healthz,
    /readyz and the API docs (/docs). Read-only. A non-loopback --host needs a token; a
    request for another host name is refused (421)."""
    from profileguard.web import serve as run_server  # without [server]: a clear error

    if token is None and os.environ.get("PROFILEGUARD_API_TOKEN") is not None:
        token = os.environ["PROFILEGUARD_API_TOKEN"]  # set but empty: refused, not ignored
    run_server(
        state(ctx).settings(),
        host=host,
        port=port,
        token=token,
        alerts=alerts,
        allow_no_token=insecure_no_token,
        show_details=show_details,
        allowed_hosts=[n for names in allowed_host or () for n in re.split(r"[,\s]+", names) if n],
    )

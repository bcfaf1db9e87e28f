"""Repair commands: ensure, worker, retry, drift, prune, register."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from enum import StrEnum
from typing import Annotated, Any

import typer

from profileguard import logs
from profileguard.cli.app import command, state
from profileguard.cli.options import JsonOption, PoolerOption, number_option
from profileguard.cli.render import err, out, print_fields, print_json
from profileguard.client import ProfileGuard
from profileguard.config import WorkerOptions
from profileguard.errors import ConfigError, ProfileGuardError
from profileguard.repair import PassResult, Worker
from profileguard.workers import deregister


@command("Repair")
def ensure(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="The user's id (key of the identity table).")],
    as_json: JsonOption = False,
) -> None:
    """Make sure one user has a profile, creating it if missing, and print it."""
    with ProfileGuard(state(ctx).settings(), max_size=1, source="cli") as guard:
        result = guard.ensure_result(user_id)
    if as_json:
        print_json(
            {
                "user_id": result.user_id,
                "created": result.created,
                "path": result.path,
                "profile": result.profile,
            }
        )
        return
    verb = "created" if result.created else "already present"
    print_fields(f"profile of {result.user_id} ({verb})", result.profile)


def _worker(ctx: typer.Context, pooler: str | None = None, **options: Any) -> Worker:
    return Worker(state(ctx).settings(pooler=pooler), **options)


def _print_pass(title: str, result: PassResult, as_json: bool) -> None:
    if as_json:
        print_json(result.as_dict())
    else:
        print_fields(title, result.as_dict())


class LogLevel(StrEnum):
    """The least severe log record the worker writes."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    """How the worker writes log records: text lines, or one JSON object per line."""

    text = "text"
    json = "json"


def _stop_on_signals(say: bool) -> tuple[threading.Event, list[str]]:
    """An event set by SIGTERM or SIGINT (the worker finishes the batch in hand, then stops),
    and the names of the signals received. `say`: tell the terminal at once."""
    stop, received = threading.Event(), []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        if say:
            err.print(f"{received[-1]}: finishing the batch in hand…")
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop, received


def _serve(worker: Worker, stop: threading.Event, received: list[str], as_json: bool) -> None:
    """Run until stopped, then leave profileguard.workers (a stopped worker is not listed)."""
    log = logging.getLogger("profileguard.worker")
    who = {"worker_id": worker.worker_id}
    log.info("worker started", extra=who)
    worker.run_forever(stop)
    try:
        deregister(worker.settings, worker.worker_id)
    except ProfileGuardError as exc:  # its row ages out; say why it is still there
        log.warning("could not deregister: %s", exc, extra=who)
    log.info("worker stopped", extra={**who, "signal": received[0] if received else None})
    if as_json:
        print_json(worker.stats)


@command("Repair")
def worker(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="One full sweep, print a summary and exit.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Users per repair transaction.")
    ] = WorkerOptions.batch_size,
    max_attempts: Annotated[
        int,
        typer.Option("--max-attempts", min=1, help="Failed attempts before a user is quarantined."),
    ] = WorkerOptions.max_attempts,
    incremental_interval: Annotated[
        float,
        number_option(
            "--incremental-interval",
            help="Seconds between incremental sweeps, for new failures and due retries.",
            low=0.05,
            high=86400,
        ),
    ] = WorkerOptions.incremental_interval,
    full_interval: Annotated[
        float,
        number_option(
            "--full-interval", help="Seconds between full sweeps.", low=0.1, high=7 * 86400
        ),
    ] = WorkerOptions.full_interval,
    worker_id: Annotated[
        str | None,
        typer.Option("--worker-id", help="Name in profileguard.workers (default host:pid:random)."),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", help="Least severe log record written (stderr).")
    ] = LogLevel.info,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="Log lines as text, or one JSON object per line (with each record's fields).",
        ),
    ] = LogFormat.text,
    pooler: PoolerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Repair users without a profile: LISTEN for failures (polling only through a
    transaction-mode pooler), sweep periodically. Runs until SIGTERM/SIGINT (finishing the batch
    in hand, then leaving profileguard.workers); several workers may run at once."""
    logs.configure(LogLevel(log_level).value, LogFormat(log_format).value)
    text = LogFormat(log_format) is LogFormat.text
    # Before connecting: a signal while the worker starts stops it cleanly too.
    stop, received = _stop_on_signals(say=text)
    worker = _worker(
        ctx,
        pooler,
        worker_id=worker_id,
        batch_size=batch_size,
        max_attempts=max_attempts,
        incremental_interval=incremental_interval,
        full_interval=full_interval,
    )
    try:
        if once:
            _print_pass("worker pass", worker.run_once(stop), as_json)
            return
        if text and not as_json:
            err.print(f"profileguard worker {worker.worker_id} started; Ctrl-C stops it.")
        _serve(worker, stop, received, as_json)
    finally:
        worker.close()


@command("Repair")
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
        raise ConfigError("nothing to retry", hint="pass USER_ID… or --all-quarantined")
    worker = Worker(state(ctx).settings(pooler=pooler))
    try:
        result = worker.retry(user_ids or (), all_quarantined=all_quarantined)
    finally:
        worker.close()
    _print_pass("retry", result, as_json)


@command("Repair")
def drift(
    ctx: typer.Context,
    fix: Annotated[
        bool, typer.Option("--fix", help="Also bring every drifted profile in step now.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Profiles whose follow/fill_empty columns disagree with their user (and soft-deleted users
    whose profile is not redacted): count, by column, a sample. Read-only unless --fix."""
    from profileguard.repair.drift import DriftRepair, DriftResult, report

    settings = state(ctx).settings()
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
        out.print("fix: profileguard drift --fix (or let the worker repair them)", highlight=False)


@command("Repair")
def prune(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the profiles without a user; remove nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove profiles whose user no longer exists (run with --dry-run first)."""
    from profileguard.prune import prune as run_prune

    result = run_prune(state(ctx).settings(), dry_run=dry_run)
    if as_json:
        print_json(result.as_dict())
        return
    for user_id in result.orphans:
        out.print(user_id, highlight=False)
    if dry_run:
        out.print(
            f"{len(result.orphans)} profile(s) without a user; remove them with: "
            "profileguard prune",
            highlight=False,
        )
    else:
        out.print(f"removed {result.removed} profile(s) without a user.", highlight=False)


@command("Repair")
def register(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The new user's email.")],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password from standard input "
            "(never from the command line). Without it the user is passwordless "
            "(magic link / OTP).",
        ),
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
    with ProfileGuard(state(ctx).settings(), max_size=1, source="cli") as guard:
        result = guard.register(
            email=email, password=password, metadata=metadata, email_confirmed=confirmed
        )
    if as_json:
        print_json(result.as_dict())
        return
    print_fields(f"user {result.id} ({result.user['email']})", result.profile)


# ---------------------------------------------------------------- observability: status, serve

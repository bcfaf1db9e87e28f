"""The backfill command: batched, throttled, resumable, with a progress display."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from profileguard.backfill.model import Options
from profileguard.cli.app import command, state
from profileguard.cli.options import JsonOption, PoolerOption, number_option
from profileguard.cli.render import duration, err, out, print_fields, print_json
from profileguard.errors import ExitCode


def _backfill_progress(as_json: bool, dry_run: bool) -> tuple[Any, Callable[[Any], None]]:
    """A rich progress bar on a terminal; plain lines every few seconds otherwise (stderr).

    A dry run creates nothing: its counts read "would create" and "would fail"."""
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

    name = "dry run" if dry_run else "backfill"
    create, fail = ("would create", "would fail") if dry_run else ("created", "failed")
    if err.is_terminal:
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]:,.0f} rows/s"),
            TextColumn(f"{create} {{task.fields[created]:,}}  {fail} {{task.fields[failed]:,}}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            transient=as_json,
        )
        task = bar.add_task(name, total=None, rate=0.0, created=0, failed=0)

        def update(p: Any) -> None:
            bar.update(
                task,
                completed=p.scanned,
                total=max(p.total_estimate, p.scanned),
                rate=p.rows_per_second,
                created=p.created,
                failed=p.failed,
                description=f"{name} #{p.run_id}",
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
            f"{name} #{p.run_id}: scanned {p.scanned}/{total} {create} {p.created} "
            f"{fail} {p.failed} batches {p.batches} batch size {p.batch_size} "
            f"{p.rows_per_second:.0f} rows/s ETA {duration(eta)}",
            highlight=False,
            soft_wrap=True,
        )

    return None, line


# The float options, each finite and within its range (number_option).
TargetSeconds = Annotated[
    float,
    number_option(
        "--target-seconds",
        help="Batch duration the batch size aims at.",
        low=0,
        high=600,
        above=True,
    ),
]
MaxRowsPerSecond = Annotated[
    float | None,
    number_option(
        "--max-rows-per-second",
        help="Throttle, in users scanned per second.",
        low=0,
        high=1e9,
        above=True,
    ),
]
LockTimeout = Annotated[
    float,
    number_option(
        "--lock-timeout", help="Seconds a batch may wait for a lock.", low=0.001, high=86400
    ),
]
StatementTimeout = Annotated[
    float,
    number_option(
        "--statement-timeout", help="Seconds a batch statement may run.", low=0.001, high=86400
    ),
]


@command("Repair")
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
    min_batch_size: Annotated[int, typer.Option("--min-batch-size")] = Options.min_batch_size,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size")] = Options.max_batch_size,
    target_seconds: TargetSeconds = Options.target_seconds,
    max_rows_per_second: MaxRowsPerSecond = None,
    lock_timeout: LockTimeout = Options.lock_timeout,
    statement_timeout: StatementTimeout = Options.statement_timeout,
    sample: Annotated[
        int, typer.Option("--sample", help="Profiles shown by --dry-run.", min=0)
    ] = Options.sample,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Connections inserting batches at once (default 2: "
            "about the speed of one bulk INSERT; 1 = the lightest on the database).",
        ),
    ] = Options.workers,
    pooler: PoolerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create the missing profiles of existing users: batched, throttled, resumable."""
    from profileguard.backfill import BackfillStoppedError, run_backfill

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
    settings = state(ctx).settings(pooler=pooler)
    bar, update = _backfill_progress(as_json, dry_run)
    try:
        with _stop_after_batch() as stop, bar if bar is not None else contextlib.nullcontext():
            report = run_backfill(settings, options, progress=update, stop_event=stop)
    except BackfillStoppedError as stopped:
        # A fault that fails every user: the run so far, then the cause and its fix (exit 11).
        if stopped.report is not None:
            _backfill_view(stopped.report, as_json)
        raise
    _backfill_view(report, as_json)


@contextlib.contextmanager
def _stop_after_batch() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set the event (stop after the batch in hand); a second one stops now."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err.print("stopping after the current batch (again to stop now)…")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _backfill_view(report: Any, as_json: bool) -> None:
    """The report (JSON or a table, failures and sample profiles); exit codes for the state:
    130 interrupted, 12 completed with users whose own data was rejected."""
    data = report.as_dict()
    if as_json:
        print_json(data)
    else:
        # A dry run shows its counts as would_create and would_fail, never as done.
        hidden = {"failures", "sample"} | (
            {"created", "failed", "quarantined"} if report.dry_run else set()
        )
        shown = {k: v for k, v in data.items() if k not in hidden}
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
        err.print(
            "interrupted; continue with: profileguard backfill --resume"
            + (" --dry-run" if report.dry_run else ""),
            highlight=False,
        )
        raise typer.Exit(ExitCode.INTERRUPTED)
    if report.state == "completed" and not report.dry_run and (report.failed or report.quarantined):
        err.print(
            f"{report.failed} users got no profile: the profile table rejects their own data "
            f"({report.quarantined} newly quarantined; listed above, counted by: profileguard "
            "status); once their data is fixed, run: profileguard retry --all-quarantined",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(ExitCode.QUARANTINED)

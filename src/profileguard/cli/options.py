"""Options several commands share."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
PoolerOption = Annotated[
    str | None,
    typer.Option(
        "--pooler",
        metavar="MODE",
        help="'transaction' behind a transaction-mode pooler (Supavisor port 6543, PgBouncer "
        "pool_mode=transaction): no LISTEN, no session setting. 'session' for a direct "
        "connection or a session-mode pooler (default: PROFILEGUARD_POOLER, database.pooler in "
        "profileguard.toml; not set, a pooler seen on the connection counts as 'transaction').",
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
        "original is saved and uninstall restores it. What its function filled is learned and "
        "becomes the mapping unless one is configured. Repeatable.",
    ),
]
ScheduleOption = Annotated[
    str | None,
    typer.Option(
        "--schedule",
        help="'pg_cron': also schedule the in-database sweep profileguard.sweep() "
        "(for hosts where no worker process can run).",
    ),
]
CronScheduleOption = Annotated[
    str, typer.Option("--cron-schedule", help="When the pg_cron sweep runs.")
]
KeepTriggerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--keep-trigger",
        metavar="NAME",
        help="Keep this existing profile-creating trigger on the users table beside profileguard "
        "(both create profiles; an error in it still fails the sign-up): recorded, so installing "
        "again does not ask again and audit reports it as kept. Without this or "
        "--replace-trigger, install refuses to run beside such a trigger. Repeatable.",
    ),
]


def number_option(*names: str, help: str, low: float, high: float, above: bool = False) -> Any:
    """A float option whose value must be finite and in range (from `low`, or more than `low`
    with `above`, to `high`); the range is stated in its help and in the usage error (exit 2).
    Click alone lets nan through every range, and inf past a range without a maximum."""
    span = f"more than {_shown(low)} and at most {_shown(high)}"
    if not above:
        span = f"from {_shown(low)} to {_shown(high)}"
    text = f"{help.rstrip('.')} ({span})."
    return typer.Option(*names, help=text, callback=_within(low, high, above, span))


def _within(low: float, high: float, above: bool, span: str) -> Callable[[float | None], Any]:
    """The callback of number_option: the value, or a usage error that states the range."""

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        fits = (value > low if above else value >= low) and value <= high
        if not (math.isfinite(value) and fits):
            raise typer.BadParameter(f"must be a number {span}, not {_shown(value)}")
        return value

    return check


def _shown(number: float) -> str:
    """A bound or a value as a person writes it: 0.001, 86,400, 1,000,000,000, nan, inf."""
    return format(number, ",.15g")

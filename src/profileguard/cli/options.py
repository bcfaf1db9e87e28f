"""Options several commands share."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
PoolerOption = Annotated[
    str | None,
    typer.Option(
        "--pooler",
        metavar="MODE",
        help="'transaction' behind a transaction-mode pooler (Supavisor port 6543, PgBouncer "
        "pool_mode=transaction): no LISTEN, no session lock, nothing prepared. 'session' for a "
        "direct connection or a session-mode pooler (default: PROFILEGUARD_POOLER, "
        "database.pooler in profileguard.toml).",
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
ScheduleOption = Annotated[
    str | None,
    typer.Option(
        "--schedule",
        help="'pg_cron': also schedule the in-database sweep profileguard.reconcile() "
        "(for hosts where no worker process can run).",
    ),
]
CronScheduleOption = Annotated[
    str, typer.Option("--cron-schedule", help="When the pg_cron sweep runs.")
]

"""The pg_cron job of `install --schedule pg_cron` (and `sql --schedule pg_cron`): a bounded
in-database sweep, removed by uninstall."""

from __future__ import annotations

import re

from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.errors import ConfigError
from profileguard.install.run import InstallResult, Recorder

CRON_JOB = "profileguard-sweep"
# The job's name before schema version 16 (it called profileguard.reconcile(), an alias now):
# scheduling again replaces it.
FORMER_CRON_JOB = "profileguard-reconcile"
CRON_MAX_ROWS = 10_000
CRON_SCHEDULE = re.compile(r"(\S+\s+){4}\S+|[1-9][0-9]? seconds")


def schedule_sweep(rec: Recorder, schedule: str, result: InstallResult) -> None:
    """Schedule profileguard.sweep() with pg_cron (idempotent: the job is named); a job of the
    former name is unscheduled."""
    if not CRON_SCHEDULE.fullmatch(schedule.strip()):
        raise ConfigError(
            f"--cron-schedule: {schedule!r} is not a cron schedule",
            hint="use five cron fields such as '* * * * *' (every minute) or '30 seconds'",
        )
    row = rec.conn.execute(sqlfiles.query("cron_available")).fetchone()
    available, loaded = row if row else (False, False)
    if not (available and loaded):
        raise ConfigError(
            "pg_cron is not available on this server"
            if not available
            else "pg_cron is installed on this server but not loaded",
            hint="enable pg_cron (Supabase: Database → Extensions; elsewhere add it to "
            "shared_preload_libraries and restart), or run 'profileguard worker' on a host "
            "that reaches the database instead",
        )
    rec.run("create extension if not exists pg_cron")
    rec.run(
        sql.SQL("select cron.unschedule(j.jobid) from cron.job j where j.jobname = {}").format(
            sql.Literal(FORMER_CRON_JOB)
        )
    )
    rec.run(
        sql.SQL("select cron.schedule({}, {}, {})").format(
            sql.Literal(CRON_JOB),
            sql.Literal(schedule.strip()),
            sql.Literal(f"select profileguard.sweep({CRON_MAX_ROWS})"),
        )
    )
    result.notes.append(
        f"pg_cron job {CRON_JOB!r} runs profileguard.sweep({CRON_MAX_ROWS}) on '{schedule.strip()}'"
    )
    result.changed = True

"""Faults that stop a run: what they are called and how to fix them.

A fault that fails every user (the repair engine's "systemic" fingerprints, or profileguard's own
schema or the profile table gone or out of reach) stops the run with exit code 11: charging it to
each user would quarantine them all for something none of them did. The message names the cause
(SQLSTATE and the column, constraint or table), the hint the fix and `--resume`; the checkpoint
is kept at the last batch done, so the resumed run redoes the failing range."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from profileguard.backfill.model import BackfillStoppedError

# profileguard itself vanished mid-run (uninstall, a dropped function), or the database is gone.
VANISHED = frozenset({"3F000", "42883", "42P01", "3D000"})
# The profile table (or one of profileguard's tables) is out of reach: a missing privilege.
UNUSABLE = frozenset({"42501"})
RESUME = "profileguard backfill --resume"

# What each SQLSTATE is, and how to fix it when it fails every user.
CAUSES: dict[str, tuple[str, str]] = {
    "23502": (
        "not-null violation on column",
        "fix the profile table (add a default or drop the column's NOT NULL), or map a "
        "value to the column in the configuration's [mapping] and run: profileguard install",
    ),
    "23514": (
        "check violation of constraint",
        "fix the CHECK constraint on the profile table, or the [mapping] that fills it "
        "(then run: profileguard install)",
    ),
    "23503": (
        "foreign key violation of constraint",
        "fix the foreign key of the profile table (or the rows it points to)",
    ),
    "23505": (
        "unique violation of",
        "fix the unique index of the profile table (or the [mapping] of its column)",
    ),
    "22001": (
        "value too long for column",
        "widen the column of the profile table, or shorten what the [mapping] puts in it",
    ),
    "42703": (
        "a column the mapping writes does not exist:",
        "render the mapping for the table as it is now: profileguard install",
    ),
    "42501": (
        "permission denied:",
        "grant the role that installed profileguard INSERT on the profile table (or "
        "connect as that role)",
    ),
    "55P03": (
        "lock not available:",
        "end the transaction that holds a lock on the profile table (see pg_locks)",
    ),
    "57014": (
        "statement cancelled:",
        "raise --statement-timeout, or find what holds up inserts into the profile table",
    ),
    "3F000": (
        "profileguard's schema is gone (uninstalled during the run?):",
        "run: profileguard install",
    ),
    "42883": (
        "a profileguard function is gone (uninstalled or reinstalled during the run?):",
        "run: profileguard install",
    ),
    "42P01": (
        "a table is gone:",
        "run: profileguard install (if profileguard or the profile table was removed)",
    ),
}


def _cause(sqlstate: str | None, subject: str) -> tuple[str, str]:
    """'23502 not-null violation on column public.profiles.nickname' and its fix."""
    what, fix = CAUSES.get(sqlstate or "", ("error:", "fix the cause named here"))
    return f"{sqlstate or 'error'} {what} {subject}".strip(), fix


def _stopped(
    run_id: int | None, cause: str, fix: str, sqlstate: str | None, resumable: bool = True
) -> BackfillStoppedError:
    run = f"backfill #{run_id}" if run_id is not None else "backfill"
    then = (
        f"then run: {RESUME}"
        if resumable
        else f"then run: {RESUME} (or profileguard backfill if it finds no run to resume)"
    )
    return BackfillStoppedError(f"{run} stopped: {cause}", hint=f"{fix}; {then}", sqlstate=sqlstate)


def from_engine(systemic: Sequence[Mapping[str, Any]], run_id: int) -> BackfillStoppedError:
    """The stop for the repair engine's systemic fingerprints (a fault that fails everyone)."""
    fault = systemic[0]
    sqlstate = fault.get("sqlstate")
    subject = fault.get("object") or fault.get("message") or ""
    cause, fix = _cause(sqlstate, str(subject))
    others = [str(f.get("fingerprint")) for f in systemic[1:]]
    if others:
        cause += f" (also: {', '.join(others)})"
    return _stopped(run_id, f"every user fails: {cause}", fix, sqlstate)


def from_error(exc: BaseException, run_id: int | None) -> BackfillStoppedError | None:
    """The stop for an error that means profileguard or the profile table is gone or out of
    reach (never to be charged to users); None for any other error."""
    if not isinstance(exc, psycopg.Error) or exc.sqlstate not in VANISHED | UNUSABLE:
        return None
    message = exc.diag.message_primary or str(exc)
    cause, fix = _cause(exc.sqlstate, message)
    return _stopped(run_id, cause, fix, exc.sqlstate, resumable=exc.sqlstate in UNUSABLE)

"""The mapping planned again after the profile table changes.

The functions generated from the mapping read the profile table's constraints at install (a CHECK
or a unique index on `username` shapes the candidates). When the table changes under a running
worker, the worker plans the mapping again with the installed settings and re-creates the
generated functions that differ, under install's lock and a short lock_timeout. Where its role may
not, or where the install is managed by migrations (`profileguard sql`), it leaves them and
records why: `status` turns degraded, naming the command that brings them back in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.config import Settings
from profileguard.install.locking import INSTALL_LOCK
from profileguard.install.main_phase import config_fingerprint
from profileguard.install.templates import (
    MIGRATION_SOURCE,
    QUERIES,
    config_event,
    differing_functions,
    render_generated,
    render_sync,
)
from profileguard.mapping import build_plan, legacy

Outcome = Literal["current", "replanned", "stale", "busy", "unknown"]

# A re-plan never makes sign-ups wait: its CREATE OR REPLACE statements give up after this.
LOCK_TIMEOUT = "1s"


@dataclass
class Replan:
    """What one look at the mapping found: `changed` names the generated functions that differ
    from the ones a new plan makes; `reason` says why they were left stale."""

    outcome: Outcome
    changed: list[str]
    reason: str = ""


def _without_version(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "package_version"}


def _managed_by_migrations(conn: psycopg.Connection) -> bool:
    """The last install was a rendered file (`profileguard sql`) applied as a migration."""
    row = conn.execute(
        sqlfiles.query("last_install_source", QUERIES), {"migration": MIGRATION_SOURCE}
    ).fetchone()
    return bool(row and row[0] == MIGRATION_SOURCE)


def _record(conn: psycopg.Connection, reason: str | None) -> None:
    conn.execute(sqlfiles.query("record_mapping_stale", QUERIES), {"reason": reason})


def _stale(changed: list[str], fix: str) -> str:
    return (
        f"the profile table changed since the mapping was planned ({', '.join(changed)} differ);"
        f" {fix}"
    )


def replan(conn: psycopg.Connection, settings: Settings, *, source: str = "worker") -> Replan:
    """Plan the mapping again against the profile table as it is now; re-create the generated
    functions that differ, or record that they are stale. `settings` must be the installed ones
    (the settings row's config): otherwise nothing is judged ("unknown")."""
    with conn.transaction():
        row = conn.execute(sqlfiles.query("installed_config", QUERIES)).fetchone()
        installed = dict(row[0]) if row and row[0] else {}
        # After a takeover the installed mapping is the one learned from the legacy trigger.
        learned = legacy.recorded(conn, settings.identity, settings.profile)
        settings, _ = legacy.adopt(settings, learned, taking_over=False)
        if _without_version(installed) != _without_version(config_fingerprint(settings)):
            return Replan("unknown", [], "these settings are not the installed ones")
        plan = build_plan(conn, settings)
        rendered = (render_generated(plan), render_sync(plan))
        changed = differing_functions(conn, rendered)
        if not changed:
            _record(conn, None)
            return Replan("current", [])
        if _managed_by_migrations(conn):
            reason = _stale(changed, "render the new migration: profileguard sql")
            _record(conn, reason)
            return Replan("stale", changed, reason)
        locked = conn.execute(
            sql.SQL("select pg_try_advisory_xact_lock(hashtext({}))").format(
                sql.Literal(INSTALL_LOCK)
            )
        ).fetchone()
        if not (locked and locked[0]):
            return Replan("busy", changed)  # an install is running: it plans too
        conn.execute("select set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
        try:
            with conn.transaction():
                for part in rendered:
                    conn.execute(part)
        except psycopg.errors.InsufficientPrivilege as exc:
            reason = _stale(
                changed,
                f"this role may not re-create them ({exc.diag.message_primary});"
                " run: profileguard install",
            )
            _record(conn, reason)
            return Replan("stale", changed, reason)
        conn.execute(
            config_event(
                source,
                f"{source}: the mapping was planned again after the profile table changed",
                {"changed": changed},
            )
        )
        _record(conn, None)
        return Replan("replanned", changed)

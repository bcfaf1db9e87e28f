"""The check of profileguard's own state: installed, enabled, up to date, a worker alive."""

from __future__ import annotations

from psycopg import sql
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.audit.report import Context, Finding, iso
from profileguard.catalog import table_oid
from profileguard.install import pending_migrations, trigger_statement
from profileguard.installation import TRIGGER_NAME

# A worker whose last heartbeat is older than this is considered gone (it beats every 10 s).
WORKER_ALIVE_SECONDS = 120


def check_state(ctx: Context) -> list[Finding]:
    """profileguard's own state: installed version, flags, trigger, pending migrations, worker."""
    if ctx.installed is None:
        return [
            Finding(
                "not_installed",
                "info",
                "profileguard is not installed in this database",
                {"latest_schema_version": sqlfiles.latest_version()},
                "profileguard install --disabled",
            )
        ]
    found = []
    pending = [m.version for m in pending_migrations(ctx.conn)]
    if pending:
        found.append(
            Finding(
                "upgrade_available",
                "warning",
                f"schema version {ctx.version} installed; migrations {pending} are pending",
                {"installed_version": ctx.version, "pending": pending},
                "profileguard upgrade",
            )
        )
    if not ctx.installed.enabled:
        found.append(
            Finding(
                "disabled",
                "warning",
                "profileguard is installed but disabled: new signups get no profile from it",
                {"enabled": False},
                "profileguard enable",
            )
        )
    if ctx.installed.strict:
        found.append(
            Finding(
                "strict_mode",
                "info",
                "strict mode is on: a profile failure fails the signup",
                {"strict": True},
                "profileguard install",
            )
        )
    if ctx.identity is not None:
        oid = table_oid(ctx.conn, ctx.settings.identity)
        with ctx.conn.cursor(row_factory=dict_row) as cur:
            trigger = cur.execute(
                sqlfiles.query("identity_trigger"), {"oid": oid, "name": TRIGGER_NAME}
            ).fetchone()
        if trigger is None:
            found.append(
                Finding(
                    "trigger_missing",
                    "error",
                    f"profileguard's trigger on {ctx.settings.identity} is missing "
                    "(schema diff tools often drop triggers on auth tables)",
                    {"trigger": TRIGGER_NAME},
                    "profileguard install",
                )
            )
        elif trigger["mode"] == "D":
            found.append(
                Finding(
                    "trigger_disabled",
                    "error",
                    f"profileguard's trigger on {ctx.settings.identity} is disabled at table level",
                    {"trigger": TRIGGER_NAME},
                    # CREATE OR REPLACE re-enables it and needs only the TRIGGER privilege
                    # (ALTER TABLE … ENABLE TRIGGER needs the table's owner).
                    ctx.text(sql.SQL("{};").format(trigger_statement(ctx.settings, one_line=True))),
                )
            )
    if ctx.conn.execute("select to_regclass('profileguard.workers')").fetchone() != (None,):
        workers = ctx.rows("workers", {"alive_seconds": WORKER_ALIVE_SECONDS})[0]
        ctx.state.update(
            workers=workers["workers"],
            workers_alive=workers["alive"],
            last_heartbeat=iso(workers["last_heartbeat"]),
        )
        if workers["workers"] == 0:
            found.append(
                Finding(
                    "no_worker",
                    "info",
                    "no worker has run: profiles missed by the trigger are not repaired",
                    {"workers": 0},
                    "profileguard worker",
                )
            )
        elif workers["alive"] == 0:
            found.append(
                Finding(
                    "worker_down",
                    "warning",
                    f"no worker has sent a heartbeat in {WORKER_ALIVE_SECONDS} s",
                    {
                        "workers": workers["workers"],
                        "last_heartbeat": iso(workers["last_heartbeat"]),
                    },
                    "profileguard worker",
                )
            )
    return found

"""Install, upgrade, uninstall, enable/disable and describe profileguard in a database.

An install is two transactions under an advisory lock, so two installs never interleave: a long
one that leaves the identity table alone (main_phase.py: schema, migrations, functions; a failure
leaves nothing behind), then a short one, with a lock_timeout and retries (locking.py), for what
locks the identity table (identity_phase.py: the profile table's foreign key, the trigger, the
takeover of a legacy trigger in takeover.py) — every login updates that table. Nothing needs to
own it. Installing again with the same settings changes nothing and takes no lock on it. `render`
gives the same statements without running them; preflight.py checks the mapping first.
"""

from profileguard.install.cron import CRON_JOB, CRON_MAX_ROWS
from profileguard.install.flags import describe, set_enabled
from profileguard.install.install import check, install
from profileguard.install.migrations import pending_migrations
from profileguard.install.profile_table import profile_table_facts
from profileguard.install.render import render
from profileguard.install.run import InstallResult
from profileguard.install.templates import (
    CLAIM_SEED,
    render_generated,
    render_sync,
    trigger_statement,
)
from profileguard.install.uninstall import render_uninstall, uninstall
from profileguard.install.upgrade import upgrade
from profileguard.mapping.guards import RECORD_LOCK_MS

__all__ = [
    "CLAIM_SEED",
    "CRON_JOB",
    "CRON_MAX_ROWS",
    "RECORD_LOCK_MS",
    "InstallResult",
    "check",
    "describe",
    "install",
    "pending_migrations",
    "profile_table_facts",
    "render",
    "render_generated",
    "render_sync",
    "render_uninstall",
    "set_enabled",
    "trigger_statement",
    "uninstall",
    "upgrade",
]

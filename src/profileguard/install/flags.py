"""Turn profileguard on or off without uninstalling, and describe what is installed."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.config import Settings
from profileguard.errors import NotInstalledError
from profileguard.install.identity_phase import check_trigger_choice
from profileguard.install.migrations import pending_migrations
from profileguard.install.run import transaction
from profileguard.installation import schema_version
from profileguard.version import __version__


def set_enabled(settings: Settings, enabled: bool) -> bool:
    """Turn the trigger on or off without uninstalling; returns the previous state. Turning it
    on beside another trigger that creates profiles (neither taken over nor kept) is refused,
    as install refuses it."""
    with transaction(settings) as conn:
        if schema_version(conn) == 0:
            raise NotInstalledError(
                "profileguard is not installed in this database", hint="run: profileguard install"
            )
        row = conn.execute("select enabled from profileguard.settings for update").fetchone()
        previous = bool(row and row[0])
        if enabled and not previous:
            check_trigger_choice(
                conn,
                settings,
                enabled=True,
                replace_triggers=(),
                keep_triggers=(),
                command="install",
                then=" then profileguard enable",
            )
        if previous != enabled:
            conn.execute(
                "update profileguard.settings set enabled = %s, updated_at = now()", (enabled,)
            )
            conn.execute(
                "insert into profileguard.events (kind, source, message)"
                " values ('config', 'cli', %s)",
                ("enabled" if enabled else "disabled",),
            )
        return previous


def describe(settings: Settings) -> dict[str, Any]:
    """Package and schema versions and the installed flags."""
    info: dict[str, Any] = {
        "package_version": __version__,
        "latest_schema_version": sqlfiles.latest_version(),
        "installed": False,
        "schema_version": 0,
    }
    with transaction(settings, dry_run=True) as conn:
        version = schema_version(conn)
        if version:
            with conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(sqlfiles.query("settings")).fetchone()
            info.update(installed=True, schema_version=version)
            if row:
                info.update(
                    enabled=row["enabled"],
                    strict=row["strict"],
                    identity_table=row["identity_table"],
                    profile_table=row["profile_table"],
                    installed_package_version=row["package_version"],
                    installed_at=row["installed_at"].isoformat(),
                )
        info["upgrade_available"] = bool(version) and bool(pending_migrations(conn))
    return info

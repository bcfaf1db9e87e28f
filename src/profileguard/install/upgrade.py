"""`upgrade`: pending migrations and regenerated functions, flags kept as they are."""

from __future__ import annotations

from profileguard.config import Settings
from profileguard.install.install import run_install
from profileguard.install.render import render
from profileguard.install.run import InstallResult


def upgrade(settings: Settings, *, dry_run: bool = False) -> InstallResult:
    """Apply pending migrations and regenerate the functions, keeping flags as they are."""
    if dry_run:
        return render(settings, source="upgrade")
    return run_install(
        settings,
        strict=None,
        enabled=None,
        create_profile_table=False,
        source="upgrade",
        require_installed=True,
        force=True,
    )

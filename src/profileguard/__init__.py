"""profileguard: every user has a profile — enforced, repaired, observed and audited."""

from __future__ import annotations

from profileguard.client import AsyncProfileGuard, ProfileGuard
from profileguard.config import Settings, load_settings
from profileguard.errors import ProfileGuardError
from profileguard.version import __version__

__all__ = [
    "AsyncProfileGuard",
    "ProfileGuard",
    "ProfileGuardError",
    "Settings",
    "__version__",
    "load_settings",
]

"""profileguard: every user has a profile — enforced, repaired, observed and audited."""

from __future__ import annotations

__version__ = "0.1.0"

from profileguard.client import AsyncProfileGuard, ProfileGuard
from profileguard.config import Settings, load_settings
from profileguard.errors import ProfileGuardError

__all__ = [
    "AsyncProfileGuard",
    "ProfileGuard",
    "ProfileGuardError",
    "Settings",
    "__version__",
    "load_settings",
]

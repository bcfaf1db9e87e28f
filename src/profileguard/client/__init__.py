"""The client: ensure a user's profile, register users with their profiles, resolve logins.

`AsyncProfileGuard` (aio.py) and `ProfileGuard` (blocking.py, generated from aio.py by
tools/async_to_sync.py) share I/O-free helpers (core.py, registration.py); identity backends
(backends.py, admin_api.py) create and find users.
"""

from profileguard.client.admin_api import default_async_backend, default_backend
from profileguard.client.aio import AsyncProfileGuard
from profileguard.client.backends import (
    SUPABASE_USERS,
    AsyncIdentityBackend,
    AsyncSupabaseAuthBackend,
    IdentityBackend,
    SupabaseAuthBackend,
)
from profileguard.client.blocking import ProfileGuard
from profileguard.client.core import EnsureResult, UserId, normalize_user_id
from profileguard.client.registration import (
    Login,
    NewUser,
    PasswordPolicy,
    RegisteredUser,
    Registration,
    check_metadata,
    normalize_email,
)

__all__ = [
    "SUPABASE_USERS",
    "AsyncIdentityBackend",
    "AsyncProfileGuard",
    "AsyncSupabaseAuthBackend",
    "EnsureResult",
    "IdentityBackend",
    "Login",
    "NewUser",
    "PasswordPolicy",
    "ProfileGuard",
    "RegisteredUser",
    "Registration",
    "SupabaseAuthBackend",
    "UserId",
    "check_metadata",
    "default_async_backend",
    "default_backend",
    "normalize_email",
    "normalize_user_id",
]

"""What the blocking and async clients share, without I/O: ids, results, retry policy, errors.

Everything here is pure: the clients in blocking.py and aio.py do the connection work and call
these helpers, so both behave the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from psycopg_pool import PoolTimeout
from tenacity import retry_if_exception, stop_after_attempt, wait_random_exponential

from profileguard.config import Settings
from profileguard.db import is_transient, translate
from profileguard.errors import (
    ConnectionFailedError,
    DatabaseError,
    InvalidUserIdError,
    ProfileCreationError,
    ProfileGuardError,
    UserNotFoundError,
)

UserId = uuid.UUID | str | int
Path_ = Literal["function", "fallback"]

ENSURE_SQL = "select profile_id, created, profile from profileguard.ensure_profile(%s, %s)"
RECORD_FAILURE_SQL = "select profileguard.record_failure(%s, %s, %s, %s)"
MISSING_FUNCTION_SQLSTATES = frozenset({"3F000", "42883"})
INVALID_ID_SQLSTATES = frozenset({"22P02", "22004", "42804", "22003"})
MISSING_FUNCTION_WARNING = "profileguard.ensure_profile is missing; using the direct insert"


@dataclass(frozen=True)
class EnsureResult:
    """The profile of one user and how this call got it."""

    user_id: str
    created: bool
    profile: dict[str, Any]
    path: Path_


def normalize_user_id(user_id: UserId) -> str:
    """The id as text (a UUID in canonical form when it spells one); the server checks the rest.

    Ids are sent as untyped text, which the server casts to the key's type (22P02 or 22003 when it
    cannot). A typed parameter (an int, a uuid.UUID) whose type differs from the key's would
    instead make ensure_profile(<key type>) look missing and fail the fallback with 42883.
    """
    if isinstance(user_id, uuid.UUID):
        return str(user_id)
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        return str(user_id)
    if (
        not isinstance(user_id, str)
        or not user_id.strip()
        or len(user_id) > 200
        or "\x00" in user_id  # PostgreSQL text cannot hold NUL; the driver would refuse it
    ):
        raise InvalidUserIdError(
            f"invalid user id {str(user_id)[:80]!r}",
            hint="pass the user's key, e.g. a UUID such as 3f1c2e4a-…",
        )
    try:
        return str(uuid.UUID(user_id.strip()))
    except ValueError:
        return user_id.strip()


def retrying_kwargs(settings: Settings) -> dict[str, Any]:
    """tenacity options: transient errors retried with full-jitter exponential backoff."""
    return {
        "stop": stop_after_attempt(settings.retry_attempts),
        "wait": wait_random_exponential(
            multiplier=settings.retry_base_seconds, max=settings.retry_cap_seconds
        ),
        "retry": retry_if_exception(is_transient),
        "reraise": True,
    }


def ensure_error(exc: BaseException, user_id: UserId) -> ProfileGuardError:
    """Translate, adding what a caller of ensure() needs: bad ids and creation failures."""
    if isinstance(exc, PoolTimeout):
        return ConnectionFailedError(
            f"no database connection available: {exc}",
            hint="check DATABASE_URL and that the server is running",
        )
    err = translate(exc, context=f"ensure {user_id}")
    if isinstance(err, DatabaseError) and err.sqlstate in INVALID_ID_SQLSTATES:
        return InvalidUserIdError(
            f"invalid user id {str(user_id)[:80]!r}: {err.message}",
            sqlstate=err.sqlstate,
            hint="pass the user's key in the identity table's type (e.g. a UUID)",
        )
    if isinstance(err, DatabaseError) and not err.transient and type(err) is DatabaseError:
        return ProfileCreationError(
            err.message,
            sqlstate=err.sqlstate,
            hint=err.hint
            or "fix the mapping or the constraint named above; "
            "the failure is recorded in profileguard.events",
        )
    return err


def function_result(row: Mapping[str, Any]) -> EnsureResult:
    """The result of one profileguard.ensure_profile() row."""
    return EnsureResult(
        str(row["profile_id"]), bool(row["created"]), dict(row["profile"]), "function"
    )


def not_found(user_id: UserId, settings: Settings) -> UserNotFoundError:
    return UserNotFoundError(
        f"no user with {settings.identity.key} = {user_id} in {settings.identity}",
        hint="profiles are created only for existing users; check the id",
    )


def record_failure_params(uid: str, err: ProfileGuardError, source: str) -> tuple[Any, ...]:
    return (uid, err.sqlstate, err.message, source)

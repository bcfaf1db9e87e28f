"""The exceptions profileguard raises: one root, a few kinds a caller may want to tell apart.

Driver errors (psycopg) never leave the library untranslated: `profileguard.db.translate`
is the one place that turns them into these.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit code of the `profileguard` command: one meaning each (README lists them)."""

    description: str

    def __new__(cls, value: int, description: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    OK = 0, "success (`status`: healthy)"
    ERROR = 1, "error not covered below (the message and its `hint:` say what to do)"
    USAGE = 2, "bad usage, configuration or input"
    NOT_INSTALLED = 3, "profileguard is not installed in the database"
    UNREACHABLE = 4, "the database cannot be reached"
    USER_NOT_FOUND = 5, "no such user"
    DEGRADED = 6, "`status`: degraded"
    UNHEALTHY = 7, "`status`: unhealthy"
    FINDINGS = 8, "`audit` found a finding at or above `--fail-on`"
    USER_EXISTS = 9, "`register`: the user already exists"
    SERVE_FAILED = 10, "`serve` could not start (e.g. the port is in use)"
    BACKFILL_STOPPED = (
        11,
        ("`backfill` stopped on a fault that fails every user (fix it, then `--resume`)"),
    )
    QUARANTINED = 12, ("`backfill` finished, but some users' own data was rejected (see `status`)")
    INTERRUPTED = 130, "interrupted (`backfill`: resumable with `--resume`)"


class ProfileGuardError(Exception):
    """Root of every error profileguard raises; `hint` names the next thing to do."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None, sqlstate: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate

    def __str__(self) -> str:
        text = self.message
        if self.sqlstate:
            text = f"{text} (SQLSTATE {self.sqlstate})"
        if self.hint:
            text = f"{text}\nhint: {self.hint}"
        return text


class ConfigError(ProfileGuardError):
    """The configuration (file, environment or arguments) is invalid."""

    exit_code = ExitCode.USAGE


class UsageError(ProfileGuardError):
    """A command was called in a way it cannot work (a missing or wrong option)."""

    exit_code = ExitCode.USAGE


class ServeFailedError(ProfileGuardError):
    """The HTTP server could not start (most often: the address is already in use)."""

    exit_code = ExitCode.SERVE_FAILED


class InvalidUserIdError(ProfileGuardError):
    """A user id that cannot be the identity table's key (e.g. not a UUID)."""

    exit_code = ExitCode.USAGE


class ConnectionFailedError(ProfileGuardError):
    """The database could not be reached."""

    exit_code = ExitCode.UNREACHABLE


class NotInstalledError(ProfileGuardError):
    """profileguard's schema is missing from the database."""

    exit_code = ExitCode.NOT_INSTALLED


class UserNotFoundError(ProfileGuardError):
    """No identity row has the given key."""

    exit_code = ExitCode.USER_NOT_FOUND


class DatabaseError(ProfileGuardError):
    """A database error; `transient` tells whether retrying may succeed."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        hint: str | None = None,
        transient: bool = False,
    ):
        super().__init__(message, hint=hint, sqlstate=sqlstate)
        self.transient = transient


class ProfileCreationError(DatabaseError):
    """The profile could not be created (e.g. the mapping violates a constraint)."""


class UserExistsError(ProfileGuardError):
    """Registration found the email, identity or id already taken by another user."""

    exit_code = ExitCode.USER_EXISTS

    def __init__(
        self,
        message: str,
        *,
        conflict: str,
        hint: str | None = None,
        sqlstate: str | None = None,
    ):
        super().__init__(message, hint=hint, sqlstate=sqlstate)
        self.conflict = conflict  # "email", "identity" or "id"


class InvalidRegistrationError(ProfileGuardError):
    """Registration or login input (email, metadata, provider, claims) is not acceptable."""

    exit_code = ExitCode.USAGE


class WeakPasswordError(InvalidRegistrationError):
    """The password breaks the password policy; `reasons` names the rules it breaks."""

    def __init__(self, message: str, *, reasons: tuple[str, ...], hint: str | None = None):
        super().__init__(message, hint=hint)
        self.reasons = reasons


class ProfilePendingError(ProfileCreationError):
    """The user was created (the sign-up committed) but the profile could not be: recorded.

    `user` is the created user row; the worker or `profileguard ensure` repairs the profile
    once the cause named in the message is fixed.
    """

    def __init__(
        self,
        message: str,
        *,
        user: dict[str, object],
        sqlstate: str | None = None,
        hint: str | None = None,
    ):
        super().__init__(message, sqlstate=sqlstate, hint=hint)
        self.user = user

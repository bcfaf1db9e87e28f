"""The Python client: `ensure(user_id)` returns the user's profile, creating it when missing.

The chain, in order: the installed `profileguard.ensure_profile()` (one round trip); when it is
missing, or `PROFILEGUARD_ENABLED` is off, a direct `INSERT … ON CONFLICT DO NOTHING` built from
the same mapping. Transient errors (serialization, deadlock, lock timeout, lost connection…) are
retried with full-jitter exponential backoff; permanent ones are recorded and raised at once.
`ProfileGuard` and `AsyncProfileGuard` are twins: same behaviour, sync and asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from profileguard.config import Settings, load_settings
from profileguard.db import APPLICATION_NAME, connect, connect_options, is_transient, translate
from profileguard.errors import (
    ConnectionFailedError,
    DatabaseError,
    InvalidUserIdError,
    ProfileCreationError,
    ProfileGuardError,
    UserNotFoundError,
)
from profileguard.mapping import build_plan, insert_statement

if TYPE_CHECKING:
    # identity builds on this module; it is imported lazily below to avoid an import cycle.
    from profileguard.identity import AsyncIdentityBackend, IdentityBackend, RegisteredUser

log = logging.getLogger(__name__)

UserId = uuid.UUID | str | int
Path_ = Literal["function", "fallback"]

ENSURE_SQL = "select profile_id, created, profile from profileguard.ensure_profile(%s, %s)"
RECORD_FAILURE_SQL = "select profileguard.record_failure(%s, %s, %s, %s)"
MISSING_FUNCTION_SQLSTATES = frozenset({"3F000", "42883"})
INVALID_ID_SQLSTATES = frozenset({"22P02", "22004", "42804", "22003"})


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


def _retrying_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(settings.retry_attempts),
        "wait": wait_random_exponential(
            multiplier=settings.retry_base_seconds, max=settings.retry_cap_seconds
        ),
        "retry": retry_if_exception(is_transient),
        "reraise": True,
    }


def _error(exc: BaseException, user_id: UserId) -> ProfileGuardError:
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
            hint=err.hint or "fix the mapping or the constraint named above; "
            "the failure is recorded in profileguard.events",
        )
    return err


def _result(row: Mapping[str, Any], path: Path_) -> EnsureResult:
    return EnsureResult(str(row["profile_id"]), bool(row["created"]), dict(row["profile"]), path)


@dataclass(frozen=True)
class _Fallback:
    """SQL of the direct path, built once from the mapping and the catalog."""

    exists: sql.Composed
    insert: sql.SQL
    insert_forced: sql.SQL
    select: sql.Composed


def _fallback_sql(conn: psycopg.Connection, settings: Settings) -> _Fallback:
    plan = build_plan(conn, settings)
    identity = sql.Identifier(settings.identity.schema, settings.identity.name)
    where = sql.SQL("where u.{} = %(uid)s").format(sql.Identifier(settings.identity.key))
    # The INSERT holds text from the catalog and the configuration (CHECK expressions, patterns,
    # JSON keys) that may contain '%': escape it, then put the one parameter back.
    sentinel = sql.SQL("where u.{} = pg_uid_parameter").format(
        sql.Identifier(settings.identity.key))

    def with_parameter(statement: sql.Composed) -> sql.SQL:
        text = statement.as_string(conn).replace("%", "%%")
        return sql.SQL(text.replace("pg_uid_parameter", "%(uid)s"))

    return _Fallback(
        exists=sql.SQL("select exists (select from {} u {}) as found").format(identity, where),
        insert=with_parameter(insert_statement(plan, source=identity, where=sentinel)),
        insert_forced=with_parameter(
            insert_statement(plan, source=identity, where=sentinel, force_suffix=True)),
        select=sql.SQL("select to_jsonb(p) as profile from {} p where p.{} = %(uid)s").format(
            sql.Identifier(settings.profile.schema, settings.profile.name),
            sql.Identifier(settings.profile.key),
        ),
    )


def _fallback_sql_standalone(settings: Settings) -> _Fallback:
    """Build the fallback SQL on a short-lived connection of its own (for the async client)."""
    with connect(settings) as conn:
        return _fallback_sql(conn, settings)


def _not_found(user_id: UserId, settings: Settings) -> UserNotFoundError:
    return UserNotFoundError(
        f"no user with {settings.identity.key} = {user_id} in {settings.identity}",
        hint="profiles are created only for existing users; check the id",
    )


class ProfileGuard:
    """Synchronous client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        pool: ConnectionPool | None = None,
        max_size: int = 10,
        source: str = "client",
        identity: IdentityBackend | None = None,
    ):
        self.settings = settings or load_settings()
        self.source = source
        self._own_pool = pool is None
        self._pool = pool or ConnectionPool(
            self.settings.conninfo(),
            min_size=1,
            max_size=max_size,
            timeout=self.settings.connect_timeout,
            kwargs={"application_name": APPLICATION_NAME, **connect_options(self.settings)},
            open=True,
        )
        self._fallback: _Fallback | None = None
        self._identity = identity

    def ensure(self, user_id: UserId) -> dict[str, Any]:
        """The user's profile row, created first if missing."""
        return self.ensure_result(user_id).profile

    def ensure_result(self, user_id: UserId) -> EnsureResult:
        """Like ensure(), also telling whether the profile was created and by which path."""
        uid = normalize_user_id(user_id)
        try:
            for attempt in Retrying(**_retrying_kwargs(self.settings)):
                with attempt:
                    return self._ensure_once(uid)
        except ProfileGuardError:
            raise
        except Exception as exc:
            err = _error(exc, uid)
            if isinstance(err, ProfileCreationError):
                self._record_failure(uid, err)
            raise err from exc
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _ensure_once(self, uid: UserId) -> EnsureResult:
        with self._pool.connection() as conn:
            return self._ensure_in(conn, uid)

    def _ensure_in(self, conn: psycopg.Connection, uid: UserId) -> EnsureResult:
        """One ensure on `conn`, inside the caller's transaction when there is one."""
        if self.settings.enabled:
            try:
                with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    row = cur.execute(ENSURE_SQL, (uid, self.source)).fetchone()
                assert row is not None
                return _result(row, "function")
            except psycopg.Error as exc:
                if exc.sqlstate not in MISSING_FUNCTION_SQLSTATES:
                    raise
                log.warning("profileguard.ensure_profile is missing; using the direct insert")
        return self._ensure_direct(conn, uid)

    def _ensure_direct(self, conn: psycopg.Connection, uid: UserId) -> EnsureResult:
        if self._fallback is None:
            self._fallback = _fallback_sql(conn, self.settings)
        fb, params = self._fallback, {"uid": uid}
        with conn.cursor(row_factory=dict_row) as cur:
            found = cur.execute(fb.exists, params).fetchone()
            if not (found and found["found"]):
                raise _not_found(uid, self.settings)
            try:
                with conn.transaction():
                    created = cur.execute(fb.insert, params).rowcount > 0
            except psycopg.errors.UniqueViolation:
                created = cur.execute(fb.insert_forced, params).rowcount > 0
            row = cur.execute(fb.select, params).fetchone()
        assert row is not None
        return EnsureResult(str(uid), created, dict(row["profile"]), "fallback")

    def _record_failure(self, uid: UserId, err: ProfileGuardError) -> None:
        try:
            with self._pool.connection() as conn:
                conn.execute(RECORD_FAILURE_SQL, (str(uid), err.sqlstate, err.message, self.source))
        except Exception as exc:  # recording is best effort; the caller gets the real error
            log.warning("could not record the failure for %s: %s", uid, exc)

    @property
    def identity(self) -> IdentityBackend:
        """Where register() creates users: the backend given, else Supabase's auth.users."""
        if self._identity is None:
            from profileguard.identity import default_backend

            self._identity = default_backend(self.settings)
        return self._identity

    def register(
        self,
        *,
        email: str | None = None,
        password: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        provider: str = "email",
        provider_id: str | None = None,
        email_confirmed: bool | None = None,
        anonymous: bool = False,
        user_id: str | None = None,
    ) -> RegisteredUser:
        """Create a user and its profile in one transaction; returns both (read-your-writes).

        Email sign-up: `email` and `password` (None: a passwordless magic-link/OTP user).
        OAuth/SSO: `provider` and `provider_id` (the provider's 'sub'), `metadata` = its claims.
        Anonymous: `anonymous=True`. Raises UserExistsError, WeakPasswordError,
        InvalidRegistrationError; when the profile fails outside strict mode the user still
        commits and ProfilePendingError (carrying `.user`) is raised, the failure recorded.
        """
        from profileguard.identity import register

        return register(
            self, email=email, password=password, metadata=metadata, provider=provider,
            provider_id=provider_id, email_confirmed=email_confirmed, anonymous=anonymous,
            user_id=user_id,
        )

    def ensure_on_login(
        self, who: UserId | Mapping[str, Any], *, provider: str | None = None, create: bool = True
    ) -> RegisteredUser:
        """The logged-in user with its profile, created if missing.

        `who`: a user id, a Supabase JWT's claims (sub = the user's id), or an external
        provider's claims (with `provider`). A provider identity seen for the first time is
        registered (unless `create=False`); an unknown user id raises UserNotFoundError.
        """
        from profileguard.identity import ensure_on_login

        return ensure_on_login(self, who, provider=provider, create=create)

    def close(self) -> None:
        if self._own_pool:
            self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncProfileGuard:
    """asyncio twin of ProfileGuard. Use `async with`, or call `await close()`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        pool: AsyncConnectionPool | None = None,
        max_size: int = 10,
        source: str = "client",
        identity: AsyncIdentityBackend | None = None,
    ):
        self.settings = settings or load_settings()
        self.source = source
        self._own_pool = pool is None
        self._pool = pool or AsyncConnectionPool(
            self.settings.conninfo(),
            min_size=1,
            max_size=max_size,
            timeout=self.settings.connect_timeout,
            kwargs={"application_name": APPLICATION_NAME, **connect_options(self.settings)},
            open=False,
        )
        self._fallback: _Fallback | None = None
        self._identity = identity

    async def open(self) -> None:
        if self._own_pool:
            await self._pool.open()

    async def ensure(self, user_id: UserId) -> dict[str, Any]:
        """The user's profile row, created first if missing."""
        return (await self.ensure_result(user_id)).profile

    async def ensure_result(self, user_id: UserId) -> EnsureResult:
        """Like ensure(), also telling whether the profile was created and by which path."""
        uid = normalize_user_id(user_id)
        try:
            async for attempt in AsyncRetrying(**_retrying_kwargs(self.settings)):
                with attempt:
                    return await self._ensure_once(uid)
        except ProfileGuardError:
            raise
        except Exception as exc:
            err = _error(exc, uid)
            if isinstance(err, ProfileCreationError):
                await self._record_failure(uid, err)
            raise err from exc
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _ensure_once(self, uid: UserId) -> EnsureResult:
        async with self._pool.connection() as conn:
            return await self._ensure_in(conn, uid)

    async def _ensure_in(self, conn: psycopg.AsyncConnection, uid: UserId) -> EnsureResult:
        """One ensure on `conn`, inside the caller's transaction when there is one."""
        if self.settings.enabled:
            try:
                async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(ENSURE_SQL, (uid, self.source))
                    row = await cur.fetchone()
                assert row is not None
                return _result(row, "function")
            except psycopg.Error as exc:
                if exc.sqlstate not in MISSING_FUNCTION_SQLSTATES:
                    raise
                log.warning("profileguard.ensure_profile is missing; using the direct insert")
        return await self._ensure_direct(conn, uid)

    async def _ensure_direct(self, conn: psycopg.AsyncConnection, uid: UserId) -> EnsureResult:
        if self._fallback is None:
            self._fallback = await asyncio.to_thread(_fallback_sql_standalone, self.settings)
        fb, params = self._fallback, {"uid": uid}
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(fb.exists, params)
            found = await cur.fetchone()
            if not (found and found["found"]):
                raise _not_found(uid, self.settings)
            try:
                async with conn.transaction():
                    await cur.execute(fb.insert, params)
                    created = cur.rowcount > 0
            except psycopg.errors.UniqueViolation:
                await cur.execute(fb.insert_forced, params)
                created = cur.rowcount > 0
            await cur.execute(fb.select, params)
            row = await cur.fetchone()
        assert row is not None
        return EnsureResult(str(uid), created, dict(row["profile"]), "fallback")

    async def _record_failure(self, uid: UserId, err: ProfileGuardError) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    RECORD_FAILURE_SQL, (str(uid), err.sqlstate, err.message, self.source)
                )
        except Exception as exc:  # recording is best effort; the caller gets the real error
            log.warning("could not record the failure for %s: %s", uid, exc)

    @property
    def identity(self) -> AsyncIdentityBackend:
        """Where register() creates users: the backend given, else Supabase's auth.users."""
        if self._identity is None:
            from profileguard.identity import default_async_backend

            self._identity = default_async_backend(self.settings)
        return self._identity

    async def register(
        self,
        *,
        email: str | None = None,
        password: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        provider: str = "email",
        provider_id: str | None = None,
        email_confirmed: bool | None = None,
        anonymous: bool = False,
        user_id: str | None = None,
    ) -> RegisteredUser:
        """asyncio twin of ProfileGuard.register (bcrypt runs off the event loop)."""
        from profileguard.identity import register_async

        return await register_async(
            self, email=email, password=password, metadata=metadata, provider=provider,
            provider_id=provider_id, email_confirmed=email_confirmed, anonymous=anonymous,
            user_id=user_id,
        )

    async def ensure_on_login(
        self, who: UserId | Mapping[str, Any], *, provider: str | None = None, create: bool = True
    ) -> RegisteredUser:
        """asyncio twin of ProfileGuard.ensure_on_login."""
        from profileguard.identity import ensure_on_login_async

        return await ensure_on_login_async(self, who, provider=provider, create=create)

    async def close(self) -> None:
        if self._own_pool:
            await self._pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

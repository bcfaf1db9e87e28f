# Generated from aio.py by `python tools/async_to_sync.py`: edit aio.py, then run it again.
"""The blocking client: `ensure(user_id)` returns the user's profile, creating it when missing;
`register()` and `ensure_on_login()` return users with their profiles.

The chain, in order: the installed `profileguard.ensure_profile()` (one round trip); when it is
missing, or `PROFILEGUARD_ENABLED` is off, a direct `INSERT … ON CONFLICT DO NOTHING` built from
the same mapping. Transient errors (serialization, deadlock, lock timeout, lost connection…) are
retried with full-jitter exponential backoff; permanent ones are recorded and raised at once.

The client is written once, for asyncio, in aio.py; blocking.py is generated from it by
`python tools/async_to_sync.py`. Both use the same I/O-free helpers (core.py, registration.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Self, Unpack

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from tenacity import Retrying

from profileguard import sql as sqlfiles
from profileguard.client.admin_api import SupabaseAdminAPIBackend, default_backend
from profileguard.client.backends import QUERIES, IdentityBackend
from profileguard.client.core import (
    ENSURE_SQL,
    MISSING_FUNCTION_SQLSTATES,
    MISSING_FUNCTION_WARNING,
    RECORD_FAILURE_SQL,
    EnsureResult,
    UserId,
    ensure_error,
    function_result,
    normalize_user_id,
    not_found,
    record_failure_params,
    retrying_kwargs,
)
from profileguard.client.fallback import Fallback, fallback_sql
from profileguard.client.pools import blocking_pool
from profileguard.client.registration import (
    Login,
    NewUser,
    RegisteredUser,
    Registration,
    RegistrationFields,
    login_not_found,
    lookup_error,
    pending_error,
    profile_failure,
    record_params,
    registration_error,
    result_to_user,
)
from profileguard.config import Settings, load_settings
from profileguard.errors import ProfileCreationError, ProfileGuardError, UserExistsError

log = logging.getLogger("profileguard.client")


class ProfileGuard:
    """The blocking client. Use `with`, or call `close()` when done."""

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
        self._pool = pool or blocking_pool(self.settings, max_size)
        self._fallback: Fallback | None = None
        self._identity = identity

    def open(self) -> None:
        """Open the client's own pool if it is not open yet (entering `with` does); a pool
        passed in is the caller's to open."""
        if self._own_pool:
            self._pool.open()

    # --- ensure ---------------------------------------------------------------------------------

    def ensure(self, user_id: UserId) -> dict[str, Any]:
        """The user's profile row, created first if missing."""
        return self.ensure_result(user_id).profile

    def ensure_result(self, user_id: UserId) -> EnsureResult:
        """Like ensure(), also telling whether the profile was created and by which path."""
        uid = normalize_user_id(user_id)
        try:
            for attempt in Retrying(**retrying_kwargs(self.settings)):
                with attempt, self._pool.connection() as conn:
                    return self._ensure_in(conn, uid)
        except ProfileGuardError:
            raise
        except Exception as exc:
            err = ensure_error(exc, uid)
            if isinstance(err, ProfileCreationError):
                self._record_failure(uid, err)
            raise err from exc
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _ensure_in(self, conn: psycopg.Connection, uid: str) -> EnsureResult:
        """One ensure on `conn`, inside the caller's transaction when there is one."""
        if self.settings.enabled:
            try:
                with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    cur.execute(ENSURE_SQL, (uid, self.source))
                    row = cur.fetchone()
                assert row is not None
                return function_result(row)
            except psycopg.Error as exc:
                if exc.sqlstate not in MISSING_FUNCTION_SQLSTATES:
                    raise
                log.warning(MISSING_FUNCTION_WARNING)
        return self._ensure_direct(conn, uid)

    def _ensure_direct(self, conn: psycopg.Connection, uid: str) -> EnsureResult:
        if self._fallback is None:
            self._fallback = fallback_sql(conn, self.settings)
        fb = self._fallback
        params = {"uid": uid}
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(fb.exists, params)
            found = cur.fetchone()
            if not (found and found["found"]):
                raise not_found(uid, self.settings)
            try:
                with conn.transaction():
                    cur.execute(fb.insert, params)
                    created = cur.rowcount > 0
            except psycopg.errors.UniqueViolation:
                cur.execute(fb.insert_forced, params)
                created = cur.rowcount > 0
            cur.execute(fb.select, params)
            row = cur.fetchone()
        assert row is not None
        return EnsureResult(uid, created, dict(row["profile"]), "fallback")

    def _record_failure(self, uid: str, err: ProfileGuardError) -> None:
        try:
            with self._pool.connection() as conn:
                conn.execute(RECORD_FAILURE_SQL, record_failure_params(uid, err, self.source))
        except Exception as exc:  # recording is best effort; the caller gets the real error
            log.warning("could not record the failure for %s: %s", uid, exc)

    # --- registration ---------------------------------------------------------------------------

    @property
    def identity(self) -> IdentityBackend:
        """Where register() creates users: the backend given, else Supabase's auth.users."""
        if self._identity is None:
            self._identity = default_backend(self.settings)
        return self._identity

    def register(
        self, registration: Registration | None = None, /, **fields: Unpack[RegistrationFields]
    ) -> RegisteredUser:
        """Create a user and its profile in one transaction; returns both (read-your-writes).

        Pass a Registration or its fields as keywords (see Registration). Raises
        UserExistsError, WeakPasswordError, InvalidRegistrationError; when the profile fails
        outside strict mode the user still commits and ProfilePendingError (carrying `.user`) is
        raised, the failure recorded.
        """
        wanted = Registration.of(registration, fields)
        new = self.identity.prepare(wanted)
        try:
            for attempt in Retrying(**retrying_kwargs(self.settings)):
                with attempt:
                    return self._register_once(new, attempt.retry_state.attempt_number > 1)
        except ProfileGuardError:
            raise
        except Exception as exc:
            direct = not isinstance(self.identity, SupabaseAdminAPIBackend)
            raise registration_error(exc, new.email, settings=self.settings, direct=direct) from exc
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _register_once(self, new: NewUser, retried: bool) -> RegisteredUser:
        pending: ProfileGuardError | None = None
        with self._pool.connection() as conn, conn.transaction():
            # After a lost COMMIT the first attempt may have landed: the id is ours, so reuse it.
            user = self.identity.find_user(conn, user_id=new.id) if retried else None
            if user is None:
                user = self.identity.create_user(conn, new)
            try:
                with conn.transaction():
                    result = self._ensure_in(conn, new.id)
            except Exception as exc:
                pending = profile_failure(exc, new.id, self.settings)
                try:
                    with conn.transaction():
                        conn.execute(
                            sqlfiles.query("record_failure_once", QUERIES),
                            record_params(new.id, pending, self.source),
                        )
                except psycopg.Error as rec_exc:  # not installed: nowhere to record it
                    log.warning("could not record the failure for %s: %s", new.id, rec_exc)
            else:
                return result_to_user(user, result, created=True)
        raise pending_error(user, pending)

    def ensure_on_login(
        self, who: UserId | Mapping[str, Any], *, provider: str | None = None, create: bool = True
    ) -> RegisteredUser:
        """The logged-in user with its profile, created if missing.

        `who`: a user id, a Supabase JWT's claims (sub = the user's id), or an external
        provider's claims (with `provider`). A provider identity seen for the first time is
        registered (unless `create=False`); an unknown user id raises UserNotFoundError.
        """
        login = Login.parse(who, provider)
        for round_ in range(2):
            user = self._find(login)
            if user is not None:
                result = self.ensure_result(str(user["id"]))
                return result_to_user(user, result, created=False)
            if not (create and login.provider):
                raise login_not_found(login)
            try:
                return self.register(login.registration())
            except UserExistsError:
                if round_:
                    raise
                # A concurrent first login of the same identity may have won: look again.
        raise AssertionError("unreachable")

    def _find(self, login: Login) -> dict[str, Any] | None:
        try:
            for attempt in Retrying(**retrying_kwargs(self.settings)):
                with attempt, self._pool.connection() as conn:
                    user = None
                    if login.user_id is not None:
                        user = self.identity.find_user(conn, user_id=login.user_id)
                    if user is None and login.provider and login.provider_id:
                        user = self.identity.find_user(
                            conn, provider=login.provider, provider_id=login.provider_id
                        )
                    return user
        except ProfileGuardError:
            raise
        except Exception as exc:
            raise lookup_error(exc, login) from exc
        raise AssertionError("unreachable: tenacity re-raises the last error")

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._own_pool:
            self._pool.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

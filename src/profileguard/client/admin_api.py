"""Registration through Supabase Auth's admin API: the platform's way on hosted Supabase.

`POST {SUPABASE_URL}/auth/v1/admin/users` with the service_role key creates the user as Supabase
Auth does (its hooks, audit log and password hashing included); profileguard then ensures the
profile on its own connection, as for any other backend. Lookups read `auth.users` (reading
bypasses nothing). The id is chosen here and sent, so a registration whose response was lost is
found by id on the retry instead of being created twice. Needs httpx
(`pip install 'profileguard[supabase]'`). `default_backend()` chooses this backend when
SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are set, else writing auth.users directly.

Request and response follow supabase/auth (internal/api/admin.go): the body carries id, email,
password, email_confirm, user_metadata and app_metadata; a taken email is HTTP 422 with
error_code `email_exists`; errors are {"code", "error_code", "msg"}.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import psycopg

from profileguard.client.backends import (
    SUPABASE_USERS,
    AsyncSupabaseAuthBackend,
    SupabaseAuthBackend,
    email_taken,
)
from profileguard.client.registration import NewUser, PasswordPolicy, Registration
from profileguard.config import Settings
from profileguard.errors import (
    ConfigError,
    ConnectionFailedError,
    DatabaseError,
    InvalidRegistrationError,
    ProfileGuardError,
    WeakPasswordError,
)

if TYPE_CHECKING:
    import httpx

ADMIN_USERS_PATH = "/auth/v1/admin/users"
DUPLICATE_EMAIL_MSG = "already been registered"
# Worth trying again (the id makes it safe): rate limited, or the API is unavailable.
TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx ships with the [supabase] and [dev] extras
        raise ConfigError(
            "registration through Supabase Auth needs the httpx package",
            hint="run: pip install 'profileguard[supabase]'",
        ) from None
    return httpx


class _AdminAPI:
    """What the blocking and async backends share: the request, and the answer as a result or an
    error."""

    def __init__(
        self,
        url: str,
        service_role_key: str,
        *,
        timeout: float = 10.0,
        password_policy: PasswordPolicy | None = None,
        max_metadata_bytes: int = 64 * 1024,
    ):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"SUPABASE_URL: {url!r} is not an http(s) URL",
                hint="set SUPABASE_URL to https://<project-ref>.supabase.co",
            )
        if not service_role_key:
            raise ConfigError(
                "no service_role key for Supabase Auth's admin API",
                hint="set SUPABASE_SERVICE_ROLE_KEY (Project Settings → API → service_role)",
            )
        self.endpoint = url.rstrip("/") + ADMIN_USERS_PATH
        self.timeout = timeout
        self._key = service_role_key
        self._shape = SupabaseAuthBackend(
            password_policy=password_policy, max_metadata_bytes=max_metadata_bytes
        )

    def prepare(self, registration: Registration) -> NewUser:
        """Validate (no hashing: Supabase Auth hashes); only email users are created here."""
        if registration.anonymous or registration.provider != "email":
            kind = "anonymous" if registration.anonymous else registration.provider
            raise InvalidRegistrationError(
                f"Supabase Auth's admin API creates email users, not {kind} users",
                hint="anonymous and OAuth/SSO users are created by Supabase Auth when they sign "
                "in; call ensure_on_login() with their token's claims to get their profile",
            )
        new = self._shape.prepare(dataclasses.replace(registration, password=None))
        password = registration.password
        if password is not None:
            password = self._shape.password_policy.check(password)
        return dataclasses.replace(new, password=password)

    def request(self, new: NewUser) -> dict[str, Any]:
        """Keyword arguments of the POST for `new`."""
        body: dict[str, Any] = {
            "id": new.id,
            "email": new.email,
            "email_confirm": new.email_confirmed,
            "user_metadata": new.user_metadata,
            "app_metadata": new.app_metadata,
        }
        if new.password is not None:
            body["password"] = new.password
        return {
            "json": body,
            "headers": {"apikey": self._key, "Authorization": f"Bearer {self._key}"},
        }

    def transport_error(self, exc: Exception) -> ConnectionFailedError:
        return ConnectionFailedError(
            f"Supabase Auth at {self.endpoint} did not answer: {exc}",
            hint="check SUPABASE_URL and the network; the registration is retried safely",
        )

    def check(self, response: httpx.Response, new: NewUser) -> None:
        """Raise the profileguard error matching a refusal; return on success."""
        status = response.status_code
        if 200 <= status < 300:
            return
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        code = str(body.get("error_code") or "")
        message = str(body.get("msg") or body.get("message") or response.reason_phrase)
        text = f"Supabase Auth refused the user (HTTP {status} {code}): {message}"
        if code == "email_exists" or (status == 422 and DUPLICATE_EMAIL_MSG in message):
            raise email_taken(new.email)
        if code == "weak_password":
            weak = body.get("weak_password")
            reasons = weak.get("reasons") if isinstance(weak, dict) else None
            raise WeakPasswordError(
                text,
                reasons=tuple(str(r) for r in reasons or ("policy",)),
                hint="choose a password that meets the project's password policy "
                "(Authentication → Providers → Email)",
            )
        if status in (401, 403):
            raise ConfigError(
                text,
                hint="set SUPABASE_SERVICE_ROLE_KEY to the project's service_role key "
                "(Project Settings → API); the anon key cannot create users",
            )
        if status == 404:
            raise ConfigError(
                f"no Supabase Auth admin API at {self.endpoint} (HTTP 404)",
                hint="set SUPABASE_URL to the project URL, https://<project-ref>.supabase.co",
            )
        if status in TRANSIENT_STATUS:
            raise ConnectionFailedError(text, hint="Supabase Auth is busy; it is retried")
        if status in (400, 422):
            raise InvalidRegistrationError(text, hint="fix the registration input named above")
        raise DatabaseError(
            text,
            hint="Supabase Auth could not save the user (a trigger on auth.users may have "
            "failed); run: profileguard audit",
        )

    @staticmethod
    def missing(new: NewUser) -> ProfileGuardError:
        return ConfigError(
            f"Supabase Auth created user {new.id}, but this database has no such auth.users row",
            hint="SUPABASE_URL and DATABASE_URL must point at the same Supabase project",
        )


class SupabaseAdminAPIBackend(SupabaseAuthBackend):
    """Creates users with Supabase Auth's admin API; finds them in `auth.users`."""

    def __init__(self, url: str, service_role_key: str, **options: Any):
        super().__init__()
        self.api = _AdminAPI(url, service_role_key, **options)

    def prepare(self, registration: Registration) -> NewUser:
        return self.api.prepare(registration)

    def create_user(self, conn: psycopg.Connection, new: NewUser) -> dict[str, Any]:
        """POST the user (committed by Supabase Auth), then read it on `conn`."""
        httpx = _httpx()
        try:
            with httpx.Client(timeout=self.api.timeout) as client:
                response = client.post(self.api.endpoint, **self.api.request(new))
        except httpx.HTTPError as exc:
            raise self.api.transport_error(exc) from exc
        self.api.check(response, new)
        user = self.find_user(conn, user_id=new.id)
        if user is None:
            raise self.api.missing(new)
        return user


class AsyncSupabaseAdminAPIBackend(AsyncSupabaseAuthBackend):
    """asyncio twin of SupabaseAdminAPIBackend."""

    def __init__(self, url: str, service_role_key: str, **options: Any):
        super().__init__()
        self.api = _AdminAPI(url, service_role_key, **options)

    def prepare(self, registration: Registration) -> NewUser:
        return self.api.prepare(registration)

    async def create_user(self, conn: psycopg.AsyncConnection, new: NewUser) -> dict[str, Any]:
        httpx = _httpx()
        try:
            async with httpx.AsyncClient(timeout=self.api.timeout) as client:
                response = await client.post(self.api.endpoint, **self.api.request(new))
        except httpx.HTTPError as exc:
            raise self.api.transport_error(exc) from exc
        self.api.check(response, new)
        user = await self.find_user(conn, user_id=new.id)
        if user is None:
            raise self.api.missing(new)
        return user


def _check_default_table(settings: Settings) -> None:
    if settings.identity != SUPABASE_USERS:
        raise ConfigError(
            f"no identity backend for {settings.identity}: the built-in one writes auth.users",
            hint="pass identity=YourBackend() (an IdentityBackend) to ProfileGuard",
        )


def default_backend(settings: Settings) -> SupabaseAuthBackend:
    """The backend used when none is given: Supabase Auth's admin API when SUPABASE_URL and
    SUPABASE_SERVICE_ROLE_KEY are set (the platform's way), else auth.users written directly."""
    _check_default_table(settings)
    if settings.supabase_url and settings.supabase_service_role_key:
        return SupabaseAdminAPIBackend(settings.supabase_url, settings.supabase_service_role_key)
    return SupabaseAuthBackend()


def default_async_backend(settings: Settings) -> AsyncSupabaseAuthBackend:
    """asyncio twin of default_backend."""
    _check_default_table(settings)
    if settings.supabase_url and settings.supabase_service_role_key:
        return AsyncSupabaseAdminAPIBackend(
            settings.supabase_url, settings.supabase_service_role_key
        )
    return AsyncSupabaseAuthBackend()


__all__ = [
    "AsyncSupabaseAdminAPIBackend",
    "SupabaseAdminAPIBackend",
    "default_async_backend",
    "default_backend",
]

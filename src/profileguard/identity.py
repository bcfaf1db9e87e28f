"""Registration: create the user through an identity backend and return it *with* its profile.

Both ways users arrive go through here. `register()` (email/password, passwordless, OAuth/SSO,
anonymous) creates the identity row and ensures the profile in the same transaction, so the
caller reads its own write: the returned user always carries its profile. `ensure_on_login()`
takes a user id or the claims of a login (a Supabase JWT, or an external provider's claims) and
returns the existing user with its profile, registering the identity on its first login.

The identity store is behind a small protocol, `IdentityBackend` (sync) / `AsyncIdentityBackend`;
`SupabaseAuthBackend` writes a Supabase-shaped `auth.users` the way Supabase Auth does. Passwords
are hashed (bcrypt) before any connection is taken and are never logged, stored or echoed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from tenacity import AsyncRetrying, Retrying

from profileguard import sql as sqlfiles
from profileguard.client import (
    INVALID_ID_SQLSTATES,
    EnsureResult,
    _error,
    _retrying_kwargs,
    normalize_user_id,
)
from profileguard.config import Settings, TableRef, check_identifier
from profileguard.db import is_transient, translate
from profileguard.errors import (
    ConfigError,
    InvalidRegistrationError,
    InvalidUserIdError,
    ProfileCreationError,
    ProfileGuardError,
    ProfilePendingError,
    UserExistsError,
    UserNotFoundError,
    WeakPasswordError,
)
from profileguard.extras import require_extra

if TYPE_CHECKING:
    from profileguard.client import AsyncProfileGuard, ProfileGuard

log = logging.getLogger(__name__)

QUERIES = "identity.sql"
SUPABASE_USERS = TableRef("auth", "users", "id")
PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
# Claims that describe the token, not the person: left out of the metadata of a new user.
TOKEN_CLAIMS = frozenset(
    {"aud", "exp", "iat", "nbf", "jti", "auth_time", "nonce", "at_hash", "c_hash", "azp",
     "provider", "role", "session_id", "aal", "amr", "is_anonymous", "app_metadata"}
)
EMAIL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>()\[\]\\,;:\"]")


def _q(name: str) -> str:
    return sqlfiles.query(name, QUERIES)


# --- what a caller gets back -------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredUser:
    """A user together with its profile, as registration or login left them.

    `created`: this call created the user. `profile_created`: this call (or the trigger its insert
    fired) created the profile. `path`: who made or read the profile — "trigger", "function"
    (profileguard.ensure_profile) or "fallback" (the client's direct insert).
    """

    user: dict[str, Any]
    profile: dict[str, Any]
    created: bool
    profile_created: bool
    path: str

    @property
    def id(self) -> str:
        return str(self.user["id"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (ids and timestamps as text)."""
        view: dict[str, Any] = json.loads(
            json.dumps(
                {
                    "user": self.user,
                    "profile": self.profile,
                    "created": self.created,
                    "profile_created": self.profile_created,
                    "path": self.path,
                },
                default=str,
            )
        )
        return view


@dataclass(frozen=True)
class NewUser:
    """A validated user ready to be inserted; holds a password hash, never the password, except
    for a backend that hands the password to the identity service itself (`password`)."""

    id: str
    email: str | None
    provider: str
    provider_id: str
    user_metadata: dict[str, Any]
    app_metadata: dict[str, Any]
    identity_data: dict[str, Any] | None  # None: no identity row (anonymous users)
    email_confirmed: bool
    anonymous: bool
    signed_in: bool  # a first login (OAuth/SSO): last_sign_in_at is set
    password_hash: str = field(default="", repr=False)
    password: str | None = field(default=None, repr=False)


# --- input rules --------------------------------------------------------------------------------


PASSWORD_CLASSES: dict[str, Callable[[str], bool]] = {
    "lower": str.islower,
    "upper": str.isupper,
    "digit": str.isdigit,
    "symbol": lambda c: not c.isalnum() and not c.isspace(),
}


@dataclass(frozen=True)
class PasswordPolicy:
    """What a password must satisfy. Defaults follow Supabase Auth: at least 6 characters.

    bcrypt reads at most 72 bytes, so longer passwords are refused rather than silently cut.
    `required` lists character classes each password must contain: "lower", "upper", "digit",
    "symbol".
    """

    min_length: int = 6
    max_bytes: int = 72
    required: tuple[str, ...] = ()

    def check(self, password: object) -> str:
        """Return the password if it satisfies the policy; WeakPasswordError names the rules."""
        if not isinstance(password, str):
            raise WeakPasswordError(
                "the password must be text", reasons=("type",), hint="pass the password as str"
            )
        reasons: list[str] = []
        problems: list[str] = []
        if len(password) < self.min_length:
            reasons.append("length")
            problems.append(f"at least {self.min_length} characters")
        if len(password.encode("utf-8")) > self.max_bytes:
            reasons.append("length")
            problems.append(f"at most {self.max_bytes} bytes (UTF-8)")
        if "\x00" in password:
            reasons.append("characters")
            problems.append("no NUL character")
        missing = [c for c in self.required if not any(PASSWORD_CLASSES[c](ch) for ch in password)]
        if missing:
            reasons.append("characters")
            problems.append("a character of each class: " + ", ".join(missing))
        if problems:
            raise WeakPasswordError(
                "the password does not meet the password policy",
                reasons=tuple(dict.fromkeys(reasons)),
                hint="choose a password with " + "; ".join(problems),
            )
        return password

    def __post_init__(self) -> None:
        unknown = [c for c in self.required if c not in PASSWORD_CLASSES]
        if unknown or self.min_length < 1 or not 1 <= self.max_bytes <= 72:
            raise ConfigError(
                f"invalid password policy (required={self.required!r}, "
                f"min_length={self.min_length}, max_bytes={self.max_bytes})",
                hint=f"required classes are {', '.join(PASSWORD_CLASSES)}; min_length >= 1; "
                "max_bytes from 1 to 72 (bcrypt's limit)",
            )


def normalize_email(email: object) -> str:
    """The email trimmed and lower-cased, as Supabase Auth stores it; clear error when invalid."""
    text = email.strip().lower() if isinstance(email, str) else ""
    local, at, domain = text.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or "@" in local
        or len(text) > 255
        or len(local) > 64
        or EMAIL_FORBIDDEN.search(text)
        or domain.startswith(".")
        or domain.endswith(".")
        or ".." in domain
    ):
        shown = str(email)[:80] if isinstance(email, str) else type(email).__name__
        raise InvalidRegistrationError(
            f"invalid email address {shown!r}",
            hint="pass an address such as ada@example.com (at most 255 characters)",
        )
    return text


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def check_metadata(metadata: object, *, max_bytes: int, what: str = "metadata") -> dict[str, Any]:
    """A JSON object PostgreSQL's jsonb can store (no NUL, finite numbers), at most `max_bytes`."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidRegistrationError(
            f"{what} must be a JSON object with text keys, not {type(metadata).__name__}",
            hint='pass a dict such as {"full_name": "Ada Lovelace"}',
        )
    try:
        text = json.dumps(dict(metadata), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRegistrationError(
            f"{what} is not JSON: {exc}",
            hint="use only str, int, float, bool, None, lists and dicts",
        ) from None
    if _has_nul(metadata):
        raise InvalidRegistrationError(
            f"{what} contains a NUL character, which PostgreSQL cannot store",
            hint="remove \\u0000 from the values",
        )
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidRegistrationError(
            f"{what} is {size} bytes, more than the {max_bytes} allowed",
            hint="keep user metadata small; store large data in your own tables",
        )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _check_provider(provider: object) -> str:
    if not isinstance(provider, str) or not PROVIDER.fullmatch(provider):
        raise InvalidRegistrationError(
            f"invalid provider {str(provider)[:40]!r}",
            hint="use a lower-case provider name such as email, google, github, discord",
        )
    return provider


def _check_provider_id(provider_id: object, provider: str) -> str:
    if isinstance(provider_id, int) and not isinstance(provider_id, bool):
        provider_id = str(provider_id)
    if (
        not isinstance(provider_id, str)
        or not provider_id.strip()
        or len(provider_id) > 255
        or "\x00" in provider_id
    ):
        raise InvalidRegistrationError(
            f"a {provider} registration needs the provider's user id (provider_id)",
            hint="pass provider_id: the 'sub' claim the provider gave for this user",
        )
    return provider_id.strip()


# --- the backends -------------------------------------------------------------------------------


class IdentityBackend(Protocol):
    """Where users live. `prepare` validates and hashes (no database); the rest run on the
    caller's connection, inside its transaction, so the profile is ensured in the same one."""

    def prepare(
        self,
        *,
        email: str | None,
        password: str | None,
        metadata: Mapping[str, Any] | None,
        provider: str,
        provider_id: str | None,
        email_confirmed: bool | None,
        anonymous: bool,
        user_id: str | None,
    ) -> NewUser: ...

    def create_user(self, conn: psycopg.Connection, new: NewUser) -> dict[str, Any]:
        """Insert the user; raise UserExistsError when its email, identity or id is taken."""
        ...

    def find_user(
        self,
        conn: psycopg.Connection,
        *,
        user_id: str | None = None,
        email: str | None = None,
        provider: str | None = None,
        provider_id: str | None = None,
    ) -> dict[str, Any] | None:
        """The user row (without secrets) found by id, by email, or by provider identity."""
        ...


class AsyncIdentityBackend(Protocol):
    """asyncio twin of IdentityBackend (`prepare` stays synchronous: it runs in a thread)."""

    def prepare(
        self,
        *,
        email: str | None,
        password: str | None,
        metadata: Mapping[str, Any] | None,
        provider: str,
        provider_id: str | None,
        email_confirmed: bool | None,
        anonymous: bool,
        user_id: str | None,
    ) -> NewUser: ...

    async def create_user(self, conn: psycopg.AsyncConnection, new: NewUser) -> dict[str, Any]:
        ...

    async def find_user(
        self,
        conn: psycopg.AsyncConnection,
        *,
        user_id: str | None = None,
        email: str | None = None,
        provider: str | None = None,
        provider_id: str | None = None,
    ) -> dict[str, Any] | None: ...


class _SupabaseShape:
    """What both Supabase backends share: validation, hashing and the statement parameters.

    `as_role`: run the inserts as this role (e.g. "supabase_auth_admin", with search_path
    `auth`), exactly as Supabase Auth does; the connecting role must be a member of it.
    `bcrypt_rounds`: 10 as Supabase Auth uses; lower only in tests.
    """

    table = SUPABASE_USERS

    def __init__(
        self,
        *,
        password_policy: PasswordPolicy | None = None,
        bcrypt_rounds: int = 10,
        as_role: str | None = None,
        max_metadata_bytes: int = 64 * 1024,
    ):
        if not 4 <= bcrypt_rounds <= 31:
            raise ConfigError(
                f"bcrypt_rounds must be from 4 to 31, not {bcrypt_rounds}",
                hint="use 10 (Supabase Auth's cost) in production",
            )
        self.password_policy = password_policy or PasswordPolicy()
        self.bcrypt_rounds = bcrypt_rounds
        self.as_role = check_identifier(as_role, "as_role") if as_role else None
        self.max_metadata_bytes = max_metadata_bytes

    def hash_password(self, password: str) -> str:
        """bcrypt hash in the $2a$ form Supabase Auth (Go's bcrypt) and pgcrypto write."""
        require_extra("register", "hashing a password")
        import bcrypt

        salt = bcrypt.gensalt(self.bcrypt_rounds, prefix=b"2a")
        return bcrypt.hashpw(password.encode("utf-8"), salt).decode("ascii")

    def prepare(
        self,
        *,
        email: str | None,
        password: str | None,
        metadata: Mapping[str, Any] | None,
        provider: str,
        provider_id: str | None,
        email_confirmed: bool | None,
        anonymous: bool,
        user_id: str | None,
    ) -> NewUser:
        """Validate the registration and hash the password; touches no database."""
        uid = normalize_user_id(user_id) if user_id is not None else str(uuid.uuid4())
        try:
            uid = str(uuid.UUID(uid))
        except ValueError:
            raise InvalidRegistrationError(
                f"user_id {uid[:80]!r} is not a UUID", hint="auth.users ids are UUIDs"
            ) from None
        user_meta = check_metadata(metadata, max_bytes=self.max_metadata_bytes)
        provider = "anonymous" if anonymous else _check_provider(provider)
        if anonymous:
            if email is not None or password is not None:
                raise InvalidRegistrationError(
                    "an anonymous user has no email and no password",
                    hint="drop email and password, or register without anonymous=True",
                )
            return NewUser(
                id=uid, email=None, provider="anonymous", provider_id=uid,
                user_metadata=user_meta,
                app_metadata={"provider": "anonymous", "providers": ["anonymous"]},
                identity_data=None, email_confirmed=False, anonymous=True, signed_in=True,
            )
        app_meta = {"provider": provider, "providers": [provider]}
        if provider == "email":
            address = normalize_email(email)
            password_hash = ""
            if password is not None:  # None: a passwordless (magic link / OTP) user
                password_hash = self.hash_password(self.password_policy.check(password))
            confirmed = bool(email_confirmed)
            identity = {"sub": uid, "email": address, "email_verified": confirmed,
                        "phone_verified": False}
            return NewUser(
                id=uid, email=address, provider="email", provider_id=uid,
                user_metadata=user_meta, app_metadata=app_meta, identity_data=identity,
                email_confirmed=confirmed, anonymous=False, signed_in=False,
                password_hash=password_hash,
            )
        if password is not None:
            raise InvalidRegistrationError(
                f"a {provider} user has no password here: the provider authenticates them",
                hint="drop password, or register with provider='email'",
            )
        pid = _check_provider_id(provider_id, provider)
        oauth_email = normalize_email(email) if email is not None and email != "" else None
        if email_confirmed is None:
            email_confirmed = user_meta.get("email_verified") is True
        identity = {**user_meta, "sub": pid, "provider_id": pid}
        if oauth_email:
            identity["email"] = oauth_email
        return NewUser(
            id=uid, email=oauth_email, provider=provider, provider_id=pid,
            user_metadata=user_meta, app_metadata=app_meta, identity_data=identity,
            email_confirmed=bool(email_confirmed and oauth_email), anonymous=False,
            signed_in=True,
        )

    @staticmethod
    def _user_params(new: NewUser) -> dict[str, Any]:
        return {
            "id": new.id,
            "email": new.email,
            "password_hash": new.password_hash,
            "confirmed": new.email_confirmed,
            "app_meta": Jsonb(new.app_metadata),
            "user_meta": Jsonb(new.user_metadata),
            "anonymous": new.anonymous,
            "signed_in": new.signed_in,
        }

    @staticmethod
    def _identity_params(new: NewUser) -> dict[str, Any]:
        return {
            "provider_id": new.provider_id,
            "id": new.id,
            "identity_data": Jsonb(new.identity_data),
            "provider": new.provider,
            "signed_in": new.signed_in,
        }

    def _role_statements(self) -> tuple[sql.Composed, sql.Composed] | None:
        if not self.as_role:
            return None
        return (
            sql.SQL("set local role {}; set local search_path = auth").format(
                sql.Identifier(self.as_role)
            ),
            sql.Composed([sql.SQL("reset role; reset search_path")]),
        )

    @staticmethod
    def _lookup(
        user_id: str | None, email: str | None, provider: str | None, provider_id: str | None
    ) -> tuple[str, dict[str, Any]]:
        if user_id is not None:
            return _q("user_by_id"), {"id": user_id}
        if email is not None:
            return _q("user_by_email"), {"email": email}
        if provider is not None and provider_id is not None:
            return _q("user_by_identity"), {"provider": provider, "provider_id": provider_id}
        raise InvalidRegistrationError(
            "find_user needs a user id, an email, or a provider and its provider_id",
            hint="pass one of them",
        )

    @staticmethod
    def _exists_error(exc: psycopg.errors.UniqueViolation, new: NewUser) -> UserExistsError:
        constraint = exc.diag.constraint_name or ""
        if exc.diag.table_name == "identities" or "provider" in constraint:
            return _identity_taken(new.provider)
        if "email" in constraint:
            return _email_taken(new.email)
        return UserExistsError(
            f"a user with id {new.id} already exists",
            conflict="id",
            sqlstate=exc.sqlstate,
            hint="let registration choose the id, or pass an unused one",
        )


def _email_taken(email: str | None) -> UserExistsError:
    return UserExistsError(
        f"a user with email {email} already exists",
        conflict="email",
        sqlstate="23505",
        hint="sign in with that account instead; to add another provider, link it to the "
        "existing account after signing in",
    )


def _identity_taken(provider: str) -> UserExistsError:
    return UserExistsError(
        f"this {provider} identity already belongs to a user",
        conflict="identity",
        sqlstate="23505",
        hint="call ensure_on_login() with the login's claims to get that user",
    )


class SupabaseAuthBackend(_SupabaseShape):
    """Users in a Supabase-shaped `auth.users` (+ `auth.identities`), written as Supabase Auth
    writes them: insert with role '', UPDATE the role, insert the identity — one transaction."""

    def create_user(self, conn: psycopg.Connection, new: NewUser) -> dict[str, Any]:
        """Insert the user and its identity on `conn`, inside the caller's transaction."""
        if new.email and self.find_user(conn, email=new.email) is not None:
            raise _email_taken(new.email)
        role = self._role_statements()
        with conn.cursor(row_factory=dict_row) as cur:
            try:
                if role:
                    cur.execute(role[0])
                cur.execute(_q("insert_user"), self._user_params(new))
                row = cur.execute(_q("set_role"), {"id": new.id}).fetchone()
                if new.identity_data is not None:
                    cur.execute(_q("insert_identity"), self._identity_params(new))
                if role:
                    cur.execute(role[1])
            except psycopg.errors.UniqueViolation as exc:
                raise self._exists_error(exc, new) from exc
        assert row is not None
        return dict(row["user"])

    def find_user(
        self,
        conn: psycopg.Connection,
        *,
        user_id: str | None = None,
        email: str | None = None,
        provider: str | None = None,
        provider_id: str | None = None,
    ) -> dict[str, Any] | None:
        query, params = self._lookup(user_id, email, provider, provider_id)
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query, params).fetchone()
        return None if row is None else dict(row["user"])


class AsyncSupabaseAuthBackend(_SupabaseShape):
    """asyncio twin of SupabaseAuthBackend."""

    async def create_user(self, conn: psycopg.AsyncConnection, new: NewUser) -> dict[str, Any]:
        """Insert the user and its identity on `conn`, inside the caller's transaction."""
        if new.email and await self.find_user(conn, email=new.email) is not None:
            raise _email_taken(new.email)
        role = self._role_statements()
        async with conn.cursor(row_factory=dict_row) as cur:
            try:
                if role:
                    await cur.execute(role[0])
                await cur.execute(_q("insert_user"), self._user_params(new))
                await cur.execute(_q("set_role"), {"id": new.id})
                row = await cur.fetchone()
                if new.identity_data is not None:
                    await cur.execute(_q("insert_identity"), self._identity_params(new))
                if role:
                    await cur.execute(role[1])
            except psycopg.errors.UniqueViolation as exc:
                raise self._exists_error(exc, new) from exc
        assert row is not None
        return dict(row["user"])

    async def find_user(
        self,
        conn: psycopg.AsyncConnection,
        *,
        user_id: str | None = None,
        email: str | None = None,
        provider: str | None = None,
        provider_id: str | None = None,
    ) -> dict[str, Any] | None:
        query, params = self._lookup(user_id, email, provider, provider_id)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            row = await cur.fetchone()
        return None if row is None else dict(row["user"])


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
        from profileguard.supabase_api import SupabaseAdminAPIBackend

        return SupabaseAdminAPIBackend(settings.supabase_url, settings.supabase_service_role_key)
    return SupabaseAuthBackend()


def default_async_backend(settings: Settings) -> AsyncSupabaseAuthBackend:
    """asyncio twin of default_backend."""
    _check_default_table(settings)
    if settings.supabase_url and settings.supabase_service_role_key:
        from profileguard.supabase_api import AsyncSupabaseAdminAPIBackend

        return AsyncSupabaseAdminAPIBackend(
            settings.supabase_url, settings.supabase_service_role_key
        )
    return AsyncSupabaseAuthBackend()


# --- login claims -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """Who is logging in: a user id, or a provider identity (and what to register it with)."""

    user_id: str | None
    provider: str | None
    provider_id: str | None
    email: str | None
    metadata: dict[str, Any]
    email_verified: bool

    @classmethod
    def parse(cls, who: object, provider: str | None = None) -> Login:
        """From a user id, or from claims: a Supabase JWT (sub = the user's id, no provider) or a
        provider's claims (sub = the provider's id for the user; `provider` or
        claims["provider"])."""
        if not isinstance(who, Mapping):
            return cls(normalize_user_id(who), None, None, None, {}, False)  # type: ignore[arg-type]
        sub = who.get("sub")
        if isinstance(sub, int) and not isinstance(sub, bool):
            sub = str(sub)
        if not isinstance(sub, str) or not sub.strip() or len(sub) > 255 or "\x00" in sub:
            raise InvalidRegistrationError(
                "login claims have no usable 'sub'",
                hint="pass the verified token's claims; 'sub' names the user",
            )
        sub = sub.strip()
        name = provider if provider is not None else who.get("provider")
        if name is not None:
            name = _check_provider(name)
        uid: str | None = None
        if name is None:  # a Supabase token: sub is the auth.users id
            try:
                uid = str(uuid.UUID(sub))
            except ValueError:
                uid = None
        # With a provider, sub is the provider's id for the user — never taken as our user id,
        # even when it looks like a UUID (Keycloak, Auth0 and others issue such subs).
        if uid is None and name is None:
            raise InvalidRegistrationError(
                f"login claims name no provider for sub {sub[:40]!r}",
                hint="pass provider='github' (or the provider's name) with its claims",
            )
        nested = who.get("user_metadata")
        meta = dict(nested) if isinstance(nested, Mapping) else {
            k: v for k, v in who.items() if k not in TOKEN_CLAIMS
        }
        if name is not None and not isinstance(nested, Mapping):
            meta.setdefault("provider_id", sub)
        email = who.get("email")
        return cls(
            uid,
            name,
            sub if name is not None else None,
            email if isinstance(email, str) and email.strip() else None,
            meta,
            who.get("email_verified") is True,
        )


def _not_found(login: Login) -> UserNotFoundError:
    who = login.user_id or f"{login.provider} identity {login.provider_id}"
    return UserNotFoundError(
        f"no user for {who}",
        hint="the user was deleted, or the claims come from another project; "
        "pass the provider (provider='github') to register a first login",
    )


def _registration_error(exc: BaseException, email: str | None) -> ProfileGuardError:
    """Translate a failure of the registration transaction."""
    err = translate(exc, context=f"register {email or 'user'}")
    if (
        isinstance(exc, psycopg.Error)
        and exc.sqlstate
        and "strict mode" in (exc.diag.message_hint or "")
        and not is_transient(exc)
    ):
        return ProfileCreationError(
            f"{err.message} (the sign-up was rolled back: strict mode)",
            sqlstate=err.sqlstate,
            hint=err.hint,
        )
    return err


def _profile_failure(exc: Exception, uid: str, settings: Settings) -> ProfileGuardError:
    """The error of the ensure step of a registration, when the user may still commit.

    Transient errors and any error in strict mode are raised (the whole registration rolls back
    and, when transient, is tried again); otherwise the user commits and the error is returned.
    """
    if is_transient(exc):
        raise exc
    err = _error(exc, uid)
    if settings.strict:
        raise err from exc
    return err


def _lookup_error(exc: BaseException, login: Login) -> ProfileGuardError:
    err = translate(exc, context="find the user logging in")
    if err.sqlstate in INVALID_ID_SQLSTATES:
        return InvalidUserIdError(
            f"invalid user id {login.user_id!r}: {err.message}",
            sqlstate=err.sqlstate,
            hint="pass the user's UUID (the 'sub' of a Supabase token)",
        )
    return err


def _pending(user: dict[str, Any], err: ProfileGuardError) -> ProfilePendingError:
    return ProfilePendingError(
        f"user {user['id']} was created but its profile could not be: {err.message}",
        user=user,
        sqlstate=err.sqlstate,
        hint=f"fix the cause above, then run: profileguard ensure {user['id']} "
        "(the failure is recorded in profileguard.events)",
    )


def _record_params(uid: str, err: ProfileGuardError, source: str) -> dict[str, Any]:
    return {"user_id": uid, "sqlstate": err.sqlstate, "message": err.message, "source": source}


def _result_to_user(
    user: dict[str, Any], result: EnsureResult, *, created: bool
) -> RegisteredUser:
    if created:
        return RegisteredUser(
            user, result.profile, True, True, result.path if result.created else "trigger"
        )
    return RegisteredUser(user, result.profile, False, result.created, result.path)


# --- sync orchestration -------------------------------------------------------------------------


def register(
    guard: ProfileGuard,
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
    """Create the user and its profile in one transaction; see ProfileGuard.register."""
    backend = guard.identity
    new = backend.prepare(
        email=email, password=password, metadata=metadata, provider=provider,
        provider_id=provider_id, email_confirmed=email_confirmed, anonymous=anonymous,
        user_id=user_id,
    )
    try:
        for attempt in Retrying(**_retrying_kwargs(guard.settings)):
            with attempt:
                return _register_once(
                    guard, backend, new, retried=attempt.retry_state.attempt_number > 1
                )
    except ProfileGuardError:
        raise
    except Exception as exc:
        raise _registration_error(exc, new.email) from exc
    raise AssertionError("unreachable: tenacity re-raises the last error")


def _register_once(
    guard: ProfileGuard, backend: IdentityBackend, new: NewUser, *, retried: bool
) -> RegisteredUser:
    pending: ProfileGuardError | None = None
    with guard._pool.connection() as conn, conn.transaction():
        # After a lost COMMIT the first attempt may have landed: the id is ours, so reuse it.
        user = backend.find_user(conn, user_id=new.id) if retried else None
        if user is None:
            user = backend.create_user(conn, new)
        try:
            with conn.transaction():
                result = guard._ensure_in(conn, new.id)
        except Exception as exc:
            pending = _profile_failure(exc, new.id, guard.settings)
            try:
                with conn.transaction():
                    conn.execute(
                        _q("record_failure_once"), _record_params(new.id, pending, guard.source)
                    )
            except psycopg.Error as rec_exc:  # not installed: nowhere to record it
                log.warning("could not record the failure for %s: %s", new.id, rec_exc)
        else:
            return _result_to_user(user, result, created=True)
    raise _pending(user, pending)


def ensure_on_login(
    guard: ProfileGuard,
    who: object,
    *,
    provider: str | None = None,
    create: bool = True,
) -> RegisteredUser:
    """The logged-in user with its profile; see ProfileGuard.ensure_on_login."""
    login = Login.parse(who, provider)
    backend = guard.identity
    for round_ in range(2):
        user = _find(guard, backend, login)
        if user is not None:
            result = guard.ensure_result(str(user["id"]))
            return _result_to_user(user, result, created=False)
        if not (create and login.provider):
            raise _not_found(login)
        try:
            return register(
                guard, email=login.email, metadata=login.metadata, provider=login.provider,
                provider_id=login.provider_id, email_confirmed=login.email_verified,
            )
        except UserExistsError:
            if round_:
                raise
            # A concurrent first login of the same identity may have won: look again.
    raise AssertionError("unreachable")


def _find(guard: ProfileGuard, backend: IdentityBackend, login: Login) -> dict[str, Any] | None:
    try:
        for attempt in Retrying(**_retrying_kwargs(guard.settings)):
            with attempt, guard._pool.connection() as conn:
                user = None
                if login.user_id is not None:
                    user = backend.find_user(conn, user_id=login.user_id)
                if user is None and login.provider and login.provider_id:
                    user = backend.find_user(
                        conn, provider=login.provider, provider_id=login.provider_id
                    )
                return user
    except ProfileGuardError:
        raise
    except Exception as exc:
        raise _lookup_error(exc, login) from exc
    raise AssertionError("unreachable: tenacity re-raises the last error")


# --- async orchestration ------------------------------------------------------------------------


async def register_async(
    guard: AsyncProfileGuard,
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
    """asyncio twin of register(); bcrypt runs in a worker thread, off the event loop."""
    backend = guard.identity
    new = await asyncio.to_thread(
        lambda: backend.prepare(
            email=email, password=password, metadata=metadata, provider=provider,
            provider_id=provider_id, email_confirmed=email_confirmed, anonymous=anonymous,
            user_id=user_id,
        )
    )
    try:
        async for attempt in AsyncRetrying(**_retrying_kwargs(guard.settings)):
            with attempt:
                return await _register_once_async(
                    guard, backend, new, retried=attempt.retry_state.attempt_number > 1
                )
    except ProfileGuardError:
        raise
    except Exception as exc:
        raise _registration_error(exc, new.email) from exc
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def _register_once_async(
    guard: AsyncProfileGuard, backend: AsyncIdentityBackend, new: NewUser, *, retried: bool
) -> RegisteredUser:
    pending: ProfileGuardError | None = None
    async with guard._pool.connection() as conn, conn.transaction():
        user = await backend.find_user(conn, user_id=new.id) if retried else None
        if user is None:
            user = await backend.create_user(conn, new)
        try:
            async with conn.transaction():
                result = await guard._ensure_in(conn, new.id)
        except Exception as exc:
            pending = _profile_failure(exc, new.id, guard.settings)
            try:
                async with conn.transaction():
                    await conn.execute(
                        _q("record_failure_once"), _record_params(new.id, pending, guard.source)
                    )
            except psycopg.Error as rec_exc:
                log.warning("could not record the failure for %s: %s", new.id, rec_exc)
        else:
            return _result_to_user(user, result, created=True)
    raise _pending(user, pending)


async def ensure_on_login_async(
    guard: AsyncProfileGuard,
    who: object,
    *,
    provider: str | None = None,
    create: bool = True,
) -> RegisteredUser:
    """asyncio twin of ensure_on_login()."""
    login = Login.parse(who, provider)
    backend = guard.identity
    for round_ in range(2):
        user = await _find_async(guard, backend, login)
        if user is not None:
            result = await guard.ensure_result(str(user["id"]))
            return _result_to_user(user, result, created=False)
        if not (create and login.provider):
            raise _not_found(login)
        try:
            return await register_async(
                guard, email=login.email, metadata=login.metadata, provider=login.provider,
                provider_id=login.provider_id, email_confirmed=login.email_verified,
            )
        except UserExistsError:
            if round_:
                raise
    raise AssertionError("unreachable")


async def _find_async(
    guard: AsyncProfileGuard, backend: AsyncIdentityBackend, login: Login
) -> dict[str, Any] | None:
    try:
        async for attempt in AsyncRetrying(**_retrying_kwargs(guard.settings)):
            with attempt:
                async with guard._pool.connection() as conn:
                    user = None
                    if login.user_id is not None:
                        user = await backend.find_user(conn, user_id=login.user_id)
                    if user is None and login.provider and login.provider_id:
                        user = await backend.find_user(
                            conn, provider=login.provider, provider_id=login.provider_id
                        )
                    return user
    except ProfileGuardError:
        raise
    except Exception as exc:
        raise _lookup_error(exc, login) from exc
    raise AssertionError("unreachable: tenacity re-raises the last error")

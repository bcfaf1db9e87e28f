"""Registration input and output, without I/O: the `Registration` value object, the rules a
registration must satisfy (email, password policy, metadata, provider), login claims, and the
errors a registration ends with. The clients and the identity backends build on these."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

import psycopg

from profileguard.client.core import (
    INVALID_ID_SQLSTATES,
    EnsureResult,
    ensure_error,
    normalize_user_id,
)
from profileguard.config import Settings
from profileguard.db import is_transient, translate
from profileguard.errors import (
    ConfigError,
    InvalidRegistrationError,
    InvalidUserIdError,
    ProfileCreationError,
    ProfileGuardError,
    ProfilePendingError,
    UserNotFoundError,
    WeakPasswordError,
)

PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
# Claims that describe the token, not the person: left out of the metadata of a new user.
TOKEN_CLAIMS = frozenset(
    {
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "auth_time",
        "nonce",
        "at_hash",
        "c_hash",
        "azp",
        "provider",
        "role",
        "session_id",
        "aal",
        "amr",
        "is_anonymous",
        "app_metadata",
    }
)
EMAIL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>()\[\]\\,;:\"]")

# --- what a caller gives --------------------------------------------------------------------------


class RegistrationFields(TypedDict, total=False):
    """The keyword arguments of register(): the fields of a Registration."""

    email: str | None
    password: str | None
    metadata: Mapping[str, Any] | None
    provider: str
    provider_id: str | None
    email_confirmed: bool | None
    anonymous: bool
    user_id: str | None


@dataclass(frozen=True)
class Registration:
    """One registration as the caller asked for it, before validation.

    Email sign-up: `email` and `password` (None: a passwordless magic-link/OTP user).
    OAuth/SSO: `provider` and `provider_id` (the provider's 'sub'), `metadata` = its claims.
    Anonymous: `anonymous=True`. `user_id`: the id to give the user (default: a new UUID).
    """

    email: str | None = None
    password: str | None = field(default=None, repr=False)
    metadata: Mapping[str, Any] | None = None
    provider: str = "email"
    provider_id: str | None = None
    email_confirmed: bool | None = None
    anonymous: bool = False
    user_id: str | None = None

    @classmethod
    def of(cls, registration: Registration | None, fields: RegistrationFields) -> Registration:
        """The registration given, or the one the keyword arguments spell (not both)."""
        if registration is None:
            return cls(**fields)
        if fields:
            raise InvalidRegistrationError(
                "pass a Registration or keyword arguments, not both",
                hint="put every field in the Registration",
            )
        return registration

    def fields(self) -> dict[str, Any]:
        """The fields as keyword arguments."""
        return asdict(self)


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


def check_provider(provider: object) -> str:
    if not isinstance(provider, str) or not PROVIDER.fullmatch(provider):
        raise InvalidRegistrationError(
            f"invalid provider {str(provider)[:40]!r}",
            hint="use a lower-case provider name such as email, google, github, discord",
        )
    return provider


def check_provider_id(provider_id: object, provider: str) -> str:
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
            name = check_provider(name)
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
        meta = (
            dict(nested)
            if isinstance(nested, Mapping)
            else {k: v for k, v in who.items() if k not in TOKEN_CLAIMS}
        )
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

    def registration(self) -> Registration:
        """What a first login of this provider identity registers."""
        return Registration(
            email=self.email,
            metadata=self.metadata,
            provider=self.provider or "email",
            provider_id=self.provider_id,
            email_confirmed=self.email_verified,
        )


def login_not_found(login: Login) -> UserNotFoundError:
    who = login.user_id or f"{login.provider} identity {login.provider_id}"
    return UserNotFoundError(
        f"no user for {who}",
        hint="the user was deleted, or the claims come from another project; "
        "pass the provider (provider='github') to register a first login",
    )


# Writing Supabase Auth's tables was refused: the role may not write them, or may not become
# the role given as `as_role` (hosted `postgres` is no member of supabase_auth_admin). The
# platform's own way in is then the Auth admin API.
AUTH_TABLES_DENIED = re.compile(
    r"permission denied (for (table (users|identities)|schema auth)\b|to set role)"
)


def admin_api_hint(settings: Settings) -> str:
    """How to send registration through Supabase Auth's admin API (see default_backend),
    naming what is missing from the settings."""
    missing = [
        name
        for name, value in (
            ("SUPABASE_URL", settings.supabase_url),
            ("SUPABASE_SERVICE_ROLE_KEY", settings.supabase_service_role_key),
        )
        if not value
    ]
    return (
        "on hosted Supabase register() goes through Supabase Auth's admin API: set "
        "SUPABASE_URL (or [supabase] url in profileguard.toml) to "
        "https://<project-ref>.supabase.co and SUPABASE_SERVICE_ROLE_KEY to the project's "
        "service_role key (Project Settings → API), and install "
        f"'profileguard[supabase]' (not set now: {', '.join(missing)})"
    )


def registration_error(
    exc: BaseException, email: str | None, *, settings: Settings, direct: bool = True
) -> ProfileGuardError:
    """Translate a failure of the registration transaction. `direct`: the backend writes
    auth.users itself (not through the admin API), so a refusal there names the admin API."""
    err = translate(exc, context=f"register {email or 'user'}")
    if direct and err.sqlstate == "42501" and AUTH_TABLES_DENIED.search(err.message):
        err.hint = "; ".join(filter(None, (err.hint, admin_api_hint(settings))))
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


def profile_failure(exc: Exception, uid: str, settings: Settings) -> ProfileGuardError:
    """The error of the ensure step of a registration, when the user may still commit.

    Transient errors and any error in strict mode are raised (the whole registration rolls back
    and, when transient, is tried again); otherwise the user commits and the error is returned.
    """
    if is_transient(exc):
        raise exc
    err = ensure_error(exc, uid)
    if settings.strict:
        raise err from exc
    return err


def lookup_error(exc: BaseException, login: Login) -> ProfileGuardError:
    err = translate(exc, context="find the user logging in")
    if err.sqlstate in INVALID_ID_SQLSTATES:
        return InvalidUserIdError(
            f"invalid user id {login.user_id!r}: {err.message}",
            sqlstate=err.sqlstate,
            hint="pass the user's UUID (the 'sub' of a Supabase token)",
        )
    return err


def pending_error(user: dict[str, Any], err: ProfileGuardError) -> ProfilePendingError:
    return ProfilePendingError(
        f"user {user['id']} was created but its profile could not be: {err.message}",
        user=user,
        sqlstate=err.sqlstate,
        hint=f"fix the cause above, then run: profileguard ensure {user['id']} "
        "(the failure is recorded in profileguard.events)",
    )


def record_params(uid: str, err: ProfileGuardError, source: str) -> dict[str, Any]:
    return {"user_id": uid, "sqlstate": err.sqlstate, "message": err.message, "source": source}


def result_to_user(user: dict[str, Any], result: EnsureResult, *, created: bool) -> RegisteredUser:
    if created:
        return RegisteredUser(
            user, result.profile, True, True, result.path if result.created else "trigger"
        )
    return RegisteredUser(user, result.profile, False, result.created, result.path)

"""Identity backends: where register() creates users and ensure_on_login() finds them.

`IdentityBackend` (blocking) / `AsyncIdentityBackend` is the protocol; `SupabaseAuthBackend`
writes a Supabase-shaped `auth.users` the way Supabase Auth does. Passwords are hashed (bcrypt) in
`prepare`, before any connection is taken, and are never logged, stored or echoed.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from profileguard import sql as sqlfiles
from profileguard.client.core import normalize_user_id
from profileguard.client.registration import (
    NewUser,
    PasswordPolicy,
    Registration,
    check_metadata,
    check_provider,
    check_provider_id,
    normalize_email,
)
from profileguard.config import TableRef, check_identifier
from profileguard.errors import ConfigError, InvalidRegistrationError, UserExistsError
from profileguard.extras import require_extra

QUERIES = "queries/identity.sql"
SUPABASE_USERS = TableRef("auth", "users", "id")


def _q(name: str) -> str:
    return sqlfiles.query(name, QUERIES)


class IdentityBackend(Protocol):
    """Where users live. `prepare` validates and hashes (no database); the rest run on the
    caller's connection, inside its transaction, so the profile is ensured in the same one."""

    def prepare(self, registration: Registration) -> NewUser:
        """Validate the registration and hash its password; touches no database."""
        ...

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

    def prepare(self, registration: Registration) -> NewUser:
        """Validate the registration and hash its password; touches no database."""
        ...

    async def create_user(self, conn: psycopg.AsyncConnection, new: NewUser) -> dict[str, Any]: ...

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

    def prepare(self, registration: Registration) -> NewUser:
        """Validate the registration and hash the password; touches no database."""
        email, password, user_id = registration.email, registration.password, registration.user_id
        provider, anonymous = registration.provider, registration.anonymous
        email_confirmed = registration.email_confirmed
        uid = normalize_user_id(user_id) if user_id is not None else str(uuid.uuid4())
        try:
            uid = str(uuid.UUID(uid))
        except ValueError:
            raise InvalidRegistrationError(
                f"user_id {uid[:80]!r} is not a UUID", hint="auth.users ids are UUIDs"
            ) from None
        user_meta = check_metadata(registration.metadata, max_bytes=self.max_metadata_bytes)
        provider = "anonymous" if anonymous else check_provider(provider)
        if anonymous:
            if email is not None or password is not None:
                raise InvalidRegistrationError(
                    "an anonymous user has no email and no password",
                    hint="drop email and password, or register without anonymous=True",
                )
            return NewUser(
                id=uid,
                email=None,
                provider="anonymous",
                provider_id=uid,
                user_metadata=user_meta,
                app_metadata={"provider": "anonymous", "providers": ["anonymous"]},
                identity_data=None,
                email_confirmed=False,
                anonymous=True,
                signed_in=True,
            )
        app_meta = {"provider": provider, "providers": [provider]}
        if provider == "email":
            address = normalize_email(email)
            password_hash = ""
            if password is not None:  # None: a passwordless (magic link / OTP) user
                password_hash = self.hash_password(self.password_policy.check(password))
            confirmed = bool(email_confirmed)
            identity = {
                "sub": uid,
                "email": address,
                "email_verified": confirmed,
                "phone_verified": False,
            }
            return NewUser(
                id=uid,
                email=address,
                provider="email",
                provider_id=uid,
                user_metadata=user_meta,
                app_metadata=app_meta,
                identity_data=identity,
                email_confirmed=confirmed,
                anonymous=False,
                signed_in=False,
                password_hash=password_hash,
            )
        if password is not None:
            raise InvalidRegistrationError(
                f"a {provider} user has no password here: the provider authenticates them",
                hint="drop password, or register with provider='email'",
            )
        pid = check_provider_id(registration.provider_id, provider)
        oauth_email = normalize_email(email) if email is not None and email != "" else None
        if email_confirmed is None:
            email_confirmed = user_meta.get("email_verified") is True
        identity = {**user_meta, "sub": pid, "provider_id": pid}
        if oauth_email:
            identity["email"] = oauth_email
        return NewUser(
            id=uid,
            email=oauth_email,
            provider=provider,
            provider_id=pid,
            user_metadata=user_meta,
            app_metadata=app_meta,
            identity_data=identity,
            email_confirmed=bool(email_confirmed and oauth_email),
            anonymous=False,
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
            return identity_taken(new.provider)
        if "email" in constraint:
            return email_taken(new.email)
        return UserExistsError(
            f"a user with id {new.id} already exists",
            conflict="id",
            sqlstate=exc.sqlstate,
            hint="let registration choose the id, or pass an unused one",
        )


def email_taken(email: str | None) -> UserExistsError:
    return UserExistsError(
        f"a user with email {email} already exists",
        conflict="email",
        sqlstate="23505",
        hint="sign in with that account instead; to add another provider, link it to the "
        "existing account after signing in",
    )


def identity_taken(provider: str) -> UserExistsError:
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
            raise email_taken(new.email)
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
            raise email_taken(new.email)
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

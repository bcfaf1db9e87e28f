"""A FastAPI app on profileguard: email sign-up, an OAuth callback, and the profile read.

    DATABASE_URL=postgresql://postgres@localhost:5432/postgres APP_JWT_SECRET=change-me \
        uvicorn examples.fastapi_app.app:app

Every route that returns a user returns its profile too: sign-up and the OAuth callback go through
`register` / `ensure_on_login` (user and profile in one transaction), and `/me` goes through the
`RequireProfile` dependency (one cheap query per user per minute, the profile created if it was
ever missing). Tokens here are HS256 JWTs signed with APP_JWT_SECRET, shaped like Supabase's
(sub = auth.users.id, role/aud "authenticated"); with Supabase, verify its tokens instead.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and they name dependencies local to create_app().
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, status
from pydantic import BaseModel, Field

from profileguard.client import AsyncProfileGuard, AsyncSupabaseAuthBackend, RegisteredUser
from profileguard.config import Settings, load_settings
from profileguard.errors import (
    InvalidRegistrationError,
    ProfilePendingError,
    UserExistsError,
    WeakPasswordError,
)
from profileguard.integrations.fastapi import RequireProfile

log = logging.getLogger("fastapi_app")

TOKEN_SECONDS = 3600
# Turns an OAuth callback's (provider, code) into the provider's claims about the user.
Exchange = Callable[[str, str], Awaitable[dict[str, Any]]]


# --- tokens (HS256, standard library only) -------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(user: dict[str, Any], secret: str, *, now: float | None = None) -> str:
    """An access token for `user`, shaped like Supabase's."""
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": str(user["id"]),
        "email": user.get("email"),
        "role": "authenticated",
        "aud": "authenticated",
        "is_anonymous": bool(user.get("is_anonymous")),
        "iat": issued,
        "exp": issued + TOKEN_SECONDS,
    }
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def verify_token(token: str, secret: str) -> dict[str, Any]:
    """The claims of a valid, unexpired token for role 'authenticated'; ValueError otherwise."""
    try:
        head, body, signature = token.split(".")
        header = json.loads(_unb64(head))
        expected = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        if header.get("alg") != "HS256" or not hmac.compare_digest(expected, _unb64(signature)):
            raise ValueError("bad signature")
        claims: dict[str, Any] = json.loads(_unb64(body))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid token: {exc}") from None
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        raise ValueError("token expired")
    if claims.get("aud") != "authenticated" or not isinstance(claims.get("sub"), str):
        raise ValueError("token is not a user's access token")
    return claims


# --- request and response bodies ---------------------------------------------------------------


class SignUp(BaseModel):
    email: str = Field(max_length=255)
    password: str = Field(max_length=1000)
    full_name: str | None = Field(default=None, max_length=1000)
    username: str | None = Field(default=None, max_length=100)
    avatar_url: str | None = Field(default=None, max_length=2000)


class Session(BaseModel):
    access_token: str
    token_type: str = "bearer"
    user: dict[str, Any]
    profile: dict[str, Any]
    created: bool


async def no_oauth_configured(provider: str, code: str) -> dict[str, Any]:
    raise HTTPException(
        status.HTTP_501_NOT_IMPLEMENTED,
        detail=f"no OAuth exchange configured for {provider}: "
        "override get_oauth_exchange with one that calls the provider",
    )


def get_oauth_exchange() -> Exchange:
    """The code → claims exchange; replace it (app.dependency_overrides) with the real one."""
    return no_oauth_configured


# --- the app ------------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    *,
    jwt_secret: str | None = None,
    bcrypt_rounds: int = 10,
    profile_ttl: float = 60.0,
) -> FastAPI:
    """Build the app; the guard opens with the app (lifespan) and closes with it."""
    settings = settings or load_settings()
    secret = jwt_secret or os.environ.get("APP_JWT_SECRET") or ""
    if not secret:
        secret = secrets.token_urlsafe(32)
        log.warning("APP_JWT_SECRET is not set: tokens are signed with a random secret")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = AsyncSupabaseAuthBackend(bcrypt_rounds=bcrypt_rounds)
        async with AsyncProfileGuard(settings, identity=backend, source="fastapi_app") as guard:
            app.state.guard = guard
            yield

    app = FastAPI(title="profileguard example", lifespan=lifespan)

    def guard() -> AsyncProfileGuard:
        g: AsyncProfileGuard = app.state.guard
        return g

    def current_user_id(authorization: Annotated[str | None, Header()] = None) -> str | None:
        """The verified token's sub; None when the request carries no token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise ValueError("not a bearer token")
            return str(verify_token(token.strip(), secret)["sub"])
        except ValueError as exc:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=str(exc),
                headers={"WWW-Authenticate": "Bearer"},
            ) from None

    require_profile = RequireProfile(guard, current_user_id, ttl=profile_ttl)
    app.state.require_profile = require_profile

    def session(result: RegisteredUser) -> Session:
        data = result.as_dict()
        return Session(
            access_token=issue_token(data["user"], secret),
            user=data["user"],
            profile=data["profile"],
            created=result.created,
        )

    @app.post("/auth/signup", status_code=status.HTTP_201_CREATED)
    async def signup(body: SignUp) -> Session:
        """Email/password sign-up: the user and its profile, created together."""
        metadata = {
            key: value
            for key, value in (
                ("full_name", body.full_name),
                ("user_name", body.username),
                ("avatar_url", body.avatar_url),
            )
            if value
        }
        try:
            result = await guard().register(
                email=body.email, password=body.password, metadata=metadata
            )
        except UserExistsError:
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail="an account with this email already exists"
            ) from None
        except WeakPasswordError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail={"message": exc.hint or exc.message, "reasons": list(exc.reasons)},
            ) from None
        except InvalidRegistrationError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.message) from None
        except ProfilePendingError:
            # The account exists; its profile failed and was recorded. The next request that
            # needs it (e.g. /me) tries again.
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail="account created; the profile is not ready yet, sign in again shortly",
                headers={"Retry-After": "5"},
            ) from None
        return session(result)

    @app.get("/auth/callback/{provider}")
    async def oauth_callback(
        provider: str, code: str, exchange: Annotated[Exchange, Depends(get_oauth_exchange)]
    ) -> Session:
        """OAuth/SSO callback: the provider's user, registered on its first login."""
        claims = await exchange(provider, code)
        try:
            result = await guard().ensure_on_login(claims, provider=provider)
        except UserExistsError:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail="this email already has an account: sign in with it, then link "
                f"{provider} from the account settings",
            ) from None
        except InvalidRegistrationError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=exc.message) from None
        return session(result)

    @app.get("/me")
    async def me(profile: Annotated[dict[str, Any], Depends(require_profile)]) -> dict[str, Any]:
        """The current user's profile — always there (created now if it was missing)."""
        return profile

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def __getattr__(name: str) -> Any:
    """`uvicorn examples.fastapi_app.app:app` builds the app from the environment on demand."""
    if name == "app":
        return create_app()
    raise AttributeError(name)

"""FastAPI: a dependency that guarantees the current user's profile on each authenticated request.

    guard = AsyncProfileGuard()                       # or ProfileGuard (run in the threadpool)
    require_profile = RequireProfile(guard, current_user_id)

    @app.get("/me")
    async def me(profile: Annotated[dict, Depends(require_profile)]) -> dict: ...

`current_user_id` is the application's own dependency returning the verified user id (e.g. the
`sub` of a checked JWT), or None when the request is not authenticated. The first request of a
user in each `ttl` seconds costs one query — `profileguard.ensure_profile`, which creates the
profile when it is missing; the others are served from a small in-process cache (LRU, at most
`max_entries` users). Concurrent first requests of one user share that one query. Within `ttl`
the profile may be stale: call `invalidate(user_id)` after changing it, or pass `ttl=0`.

FastAPI resolves `Depends(require_profile)` from the endpoint's annotations at runtime: when the
endpoint is defined inside a function and its module uses `from __future__ import annotations`,
a local `require_profile` cannot be found (FastAPI then answers 422) — keep it at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

try:
    from fastapi import Depends, HTTPException, status
    from fastapi.concurrency import run_in_threadpool
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "profileguard.integrations.fastapi needs FastAPI: pip install fastapi"
    ) from exc

from profileguard.client import AsyncProfileGuard, ProfileGuard, normalize_user_id
from profileguard.db import is_transient
from profileguard.errors import (
    ConnectionFailedError,
    InvalidUserIdError,
    ProfileCreationError,
    ProfileGuardError,
    UserNotFoundError,
)

log = logging.getLogger(__name__)

Guard = ProfileGuard | AsyncProfileGuard
GuardSource = Guard | Callable[[], Guard]


class ProfileCache:
    """Profiles by user id for `ttl` seconds, at most `max_entries` (least recently used go)."""

    def __init__(
        self, ttl: float, max_entries: int, *, clock: Callable[[], float] = time.monotonic
    ):
        if ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        """A copy of the cached profile, or None when absent or expired."""
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] <= self._clock():
                if item is not None:
                    del self._items[key]
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return dict(item[1])

    def put(self, key: str, profile: dict[str, Any]) -> None:
        if self.ttl == 0:
            return
        with self._lock:
            self._items[key] = (self._clock() + self.ttl, dict(profile))
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _http_error(exc: ProfileGuardError) -> HTTPException:
    """The response for a failed ensure: never the database's own message."""
    if isinstance(exc, InvalidUserIdError | UserNotFoundError):
        return HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="the token does not name an existing user",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if isinstance(exc, ConnectionFailedError) or is_transient(exc):
        log.warning("profile unavailable (transient): %s", exc.message)
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the profile is temporarily unavailable; try again",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, ProfileCreationError):
        log.error("profile could not be created: %s", exc)
        return HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            detail="the profile could not be created; the failure is recorded",
        )
    log.error("profile lookup failed: %s", exc)
    return HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail="profile lookup failed")


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a failed shared query's error as seen, even when every waiting request left."""
    if not task.cancelled():
        task.exception()


class RequireProfile:
    """A FastAPI dependency returning the current user's profile (a dict), created if missing.

    `guard`: a ProfileGuard / AsyncProfileGuard, or a callable returning one (e.g. reading
    `app.state`, when the guard is opened in the lifespan). `get_user_id`: the dependency that
    yields the authenticated user's id (None → 401). Errors become HTTP errors: 401 when the id
    names no user, 503 (Retry-After) when the database is unreachable or busy, 500 when the
    profile cannot be created (recorded in profileguard.events).
    """

    def __init__(
        self,
        guard: GuardSource,
        get_user_id: Callable[..., Any],
        *,
        ttl: float = 60.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._guard = guard
        self.cache = ProfileCache(ttl, max_entries, clock=clock)
        self._inflight: dict[tuple[int, str], asyncio.Task[dict[str, Any]]] = {}
        # FastAPI reads the parameters of the dependency from this signature.
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter(
                    "user_id",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=Depends(get_user_id),
                    annotation=Any,
                )
            ],
            return_annotation=dict[str, Any],
        )

    def guard(self) -> Guard:
        source = self._guard
        if isinstance(source, ProfileGuard | AsyncProfileGuard):
            return source
        return source()

    async def __call__(self, *, user_id: Any) -> dict[str, Any]:
        return await self.profile(user_id)

    async def profile(self, user_id: Any) -> dict[str, Any]:
        """The profile of `user_id`, from the cache or one ensure (shared by concurrent calls)."""
        if user_id is None or user_id == "":
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="not authenticated",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            key = normalize_user_id(user_id)
        except InvalidUserIdError as exc:
            raise _http_error(exc) from exc
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        flight = (id(loop), key)
        task = self._inflight.get(flight)
        if task is None:
            # The query runs in a task of its own, shared by every concurrent request of this
            # user; a request that is cancelled (client gone) does not cancel it for the others.
            task = loop.create_task(self._fetch(key, flight))
            task.add_done_callback(_retrieve)
            self._inflight[flight] = task
        try:
            profile = await asyncio.shield(task)
        except ProfileGuardError as exc:
            raise _http_error(exc) from exc
        return dict(profile)

    async def _fetch(self, key: str, flight: tuple[int, str]) -> dict[str, Any]:
        try:
            profile = await self._ensure(key)
            self.cache.put(key, profile)
            return profile
        finally:
            self._inflight.pop(flight, None)

    async def _ensure(self, key: str) -> dict[str, Any]:
        guard = self.guard()
        if isinstance(guard, AsyncProfileGuard):
            return await guard.ensure(key)
        return await run_in_threadpool(guard.ensure, key)

    def invalidate(self, user_id: Any) -> None:
        """Forget the cached profile of `user_id` (call after changing it)."""
        with contextlib.suppress(InvalidUserIdError):
            self.cache.invalidate(normalize_user_id(user_id))


def profile_dependency(
    guard: GuardSource,
    get_user_id: Callable[..., Any],
    *,
    ttl: float = 60.0,
    max_entries: int = 10_000,
) -> RequireProfile:
    """Shorthand for RequireProfile(guard, get_user_id, ttl=…, max_entries=…)."""
    return RequireProfile(guard, get_user_id, ttl=ttl, max_entries=max_entries)


__all__ = ["ProfileCache", "RequireProfile", "profile_dependency"]

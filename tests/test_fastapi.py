"""The FastAPI dependency: profile guaranteed per request, one query per user per TTL at most.

A real app served in-process (TestClient / httpx ASGI transport) against the real database; the
guard is the real client, wrapped only to count how many times it was asked.
"""

# No `from __future__ import annotations` here: FastAPI must see the real annotations of the
# endpoints defined inside make_app (they name a local dependency).
import asyncio
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from conftest import TestDB
from fastapi import Depends, FastAPI, Header
from fastapi.testclient import TestClient

from profileguard.client import AsyncProfileGuard, ProfileGuard
from profileguard.install import set_enabled
from profileguard.integrations.fastapi import ProfileCache, RequireProfile

ADA = {"full_name": "Ada Lovelace", "user_name": "ada"}


class CountingGuard(AsyncProfileGuard):
    """The real async client, counting ensure calls."""

    calls = 0

    async def ensure(self, user_id: Any) -> dict[str, Any]:
        self.calls += 1
        return await super().ensure(user_id)


class CountingSyncGuard(ProfileGuard):
    calls = 0

    def ensure(self, user_id: Any) -> dict[str, Any]:
        self.calls += 1
        return super().ensure(user_id)


class Clock:
    """A clock the test moves by hand (no sleeping, no timing)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def current_user_id(x_user_id: Annotated[str | None, Header()] = None) -> str | None:
    """Stands in for a verified JWT's sub."""
    return x_user_id


def make_app(require: RequireProfile) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        guard = require.guard()
        if isinstance(guard, AsyncProfileGuard):
            async with guard:  # the async pool opens on the app's event loop
                yield
        else:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/me")
    async def me(profile: Annotated[dict[str, Any], Depends(require)]) -> dict[str, Any]:
        return profile

    @app.get("/sync-me")
    def sync_me(profile: Annotated[dict[str, Any], Depends(require)]) -> dict[str, Any]:
        return profile

    return app


def user_without_profile(db: TestDB, meta: dict[str, Any] | None = None) -> uuid.UUID:
    set_enabled(db.settings, False)
    try:
        return db.signup(meta if meta is not None else ADA, email=f"{uuid.uuid4().hex}@x.io")
    finally:
        set_enabled(db.settings, True)


@pytest.fixture
def guard(installed: TestDB) -> Iterator[CountingGuard]:
    yield CountingGuard(installed.settings)


def test_profile_is_created_on_the_first_request_then_cached(
    installed: TestDB, guard: CountingGuard
) -> None:
    clock = Clock()
    require = RequireProfile(guard, current_user_id, ttl=30, clock=clock)
    uid = user_without_profile(installed)
    with TestClient(make_app(require)) as client:
        first = client.get("/me", headers={"X-User-Id": str(uid)})
        assert first.status_code == 200
        assert first.json()["full_name"] == "Ada Lovelace"
        assert installed.scalar("select count(*) from public.profiles where id = %s", (uid,)) == 1
        for _ in range(5):
            assert client.get("/me", headers={"X-User-Id": str(uid)}).json() == first.json()
        assert client.get("/sync-me", headers={"X-User-Id": str(uid)}).json() == first.json()
        assert guard.calls == 1
        assert (require.cache.hits, require.cache.misses) == (6, 1)

        # Within the TTL the cached profile is served; after it, one query reads the new one.
        with installed.connect() as conn:
            conn.execute("update public.profiles set full_name = 'Countess' where id = %s", (uid,))
        clock.now += 29
        assert client.get("/me", headers={"X-User-Id": str(uid)}).json()["full_name"] == (
            "Ada Lovelace"
        )
        clock.now += 2
        assert client.get("/me", headers={"X-User-Id": str(uid)}).json()["full_name"] == "Countess"
        assert guard.calls == 2

        # invalidate() forgets one user at once.
        with installed.connect() as conn:
            conn.execute("update public.profiles set full_name = 'Ada' where id = %s", (uid,))
        require.invalidate(uid)
        assert client.get("/me", headers={"X-User-Id": str(uid)}).json()["full_name"] == "Ada"
        assert guard.calls == 3


def test_ttl_zero_queries_every_request(installed: TestDB, guard: CountingGuard) -> None:
    require = RequireProfile(guard, current_user_id, ttl=0)
    uid = user_without_profile(installed)
    with TestClient(make_app(require)) as client:
        for _ in range(3):
            assert client.get("/me", headers={"X-User-Id": str(uid)}).status_code == 200
    assert guard.calls == 3
    assert len(require.cache) == 0


def test_cache_is_bounded_least_recently_used_first(
    installed: TestDB, guard: CountingGuard
) -> None:
    require = RequireProfile(guard, current_user_id, ttl=300, max_entries=2)
    a, b, c = (user_without_profile(installed) for _ in range(3))
    with TestClient(make_app(require)) as client:
        for uid in (a, b, a, c):  # c evicts b (a was used more recently)
            assert client.get("/me", headers={"X-User-Id": str(uid)}).status_code == 200
        assert len(require.cache) == 2
        assert guard.calls == 3
        client.get("/me", headers={"X-User-Id": str(a)})
        assert guard.calls == 3
        client.get("/me", headers={"X-User-Id": str(b)})
        assert guard.calls == 4


def test_concurrent_first_requests_share_one_query(installed: TestDB, guard: CountingGuard) -> None:
    """Ten requests of one user arrive while the profile insert is blocked by a lock held by
    another session; when it is released, all ten get the profile from one ensure call."""
    require = RequireProfile(guard, current_user_id, ttl=60)
    uid = user_without_profile(installed)
    app = make_app(require)
    blocker = installed.connect(autocommit=False)
    blocker.execute("lock table public.profiles in access exclusive mode")

    def release_when_waiting() -> bool:
        saw_waiter = False
        try:
            with installed.connect() as admin:
                for _ in range(4000):
                    waiting = admin.execute(
                        "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                        " and datname = current_database()"
                    ).fetchone()
                    if waiting and waiting[0] >= 1:
                        saw_waiter = True
                        break
                    threading.Event().wait(0.005)
        finally:
            blocker.rollback()
        return saw_waiter

    async def scenario() -> tuple[list[httpx.Response], bool]:
        await guard.open()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                release = asyncio.create_task(asyncio.to_thread(release_when_waiting))
                responses = await asyncio.gather(
                    *(client.get("/me", headers={"X-User-Id": str(uid)}) for _ in range(10))
                )
                return list(responses), await release
        finally:
            await guard.close()

    try:
        responses, saw_waiter = asyncio.run(scenario())
    finally:
        blocker.close()
    assert saw_waiter  # the one ensure really was blocked while the requests came in
    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.json()["id"] for r in responses}) == 1
    assert guard.calls == 1
    assert (require.cache.hits, require.cache.misses) == (0, 10)  # all ten waited on one query


def test_sync_guard_works_too(installed: TestDB) -> None:
    with CountingSyncGuard(installed.settings) as guard:
        require = RequireProfile(lambda: guard, current_user_id)
        uid = user_without_profile(installed)
        with TestClient(make_app(require)) as client:
            for _ in range(3):
                response = client.get("/me", headers={"X-User-Id": str(uid)})
                assert response.status_code == 200
        assert response.json()["username"] == "ada"
        assert guard.calls == 1


def test_http_errors(installed: TestDB, guard: CountingGuard) -> None:
    require = RequireProfile(guard, current_user_id)
    with TestClient(make_app(require)) as client:
        missing = client.get("/me")
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert client.get("/me", headers={"X-User-Id": str(uuid.uuid4())}).status_code == 401
        assert client.get("/me", headers={"X-User-Id": "not-a-uuid"}).status_code == 401

        # A profile that cannot be created: 500, recorded, not cached; fixed, then served.
        uid = user_without_profile(installed, {"full_name": "Rejected"})
        with installed.connect() as conn:
            conn.execute(
                "alter table public.profiles add constraint reject_name"
                " check (full_name is distinct from 'Rejected') not valid"
            )
        failed = client.get("/me", headers={"X-User-Id": str(uid)})
        assert failed.status_code == 500
        assert "Rejected" not in failed.text and "reject_name" not in failed.text
        assert (
            installed.scalar(
                "select count(*) from profileguard.failures where user_id = %s", (str(uid),)
            )
            == 1
        )
        with installed.connect() as conn:
            conn.execute("alter table public.profiles drop constraint reject_name")
        fixed = client.get("/me", headers={"X-User-Id": str(uid)})
        assert fixed.status_code == 200
        assert fixed.json()["full_name"] == "Rejected"


def test_unreachable_database_is_503(installed: TestDB) -> None:
    settings = installed.settings.with_overrides(
        database_url="postgresql://nobody@127.0.0.1:9/none", connect_timeout=1, retry_attempts=1
    )
    require = RequireProfile(AsyncProfileGuard(settings), current_user_id)
    with TestClient(make_app(require)) as client:
        response = client.get("/me", headers={"X-User-Id": str(uuid.uuid4())})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


def test_profile_cache_rules() -> None:
    clock = Clock()
    cache = ProfileCache(10, 2, clock=clock)
    cache.put("a", {"v": 1})
    got = cache.get("a")
    assert got == {"v": 1}
    assert got is not None
    got["v"] = 2  # callers get copies: mutating one does not change the cache
    assert cache.get("a") == {"v": 1}
    clock.now += 10
    assert cache.get("a") is None
    assert len(cache) == 0
    with pytest.raises(ValueError):
        ProfileCache(-1, 1)
    with pytest.raises(ValueError):
        ProfileCache(1, 0)


def test_core_package_imports_without_fastapi() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "import profileguard, profileguard.client, profileguard.cli\n"
        "import profileguard.client.admin_api\n"
        "try:\n"
        "    import profileguard.integrations.fastapi\n"
        "except ImportError as exc:\n"
        "    print('needs:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "needs: profileguard.integrations.fastapi needs FastAPI" in done.stdout

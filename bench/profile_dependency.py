"""FastAPI profile dependency benchmark: no dependency vs RequireProfile cached vs uncached.

One run, one server, one app served in-process (httpx ASGI transport, no network), three routes:

* ``plain``: the same dependency shape with the profile from a dict in memory, no profileguard
  (the floor: FastAPI, two dependency levels, serialising the same profile);
* ``cached``: ``RequireProfile(ttl=60)`` — at most one ensure query per user per minute;
* ``uncached``: ``RequireProfile(ttl=0)`` — one ``profileguard.ensure_profile`` query per request.

``--requests`` requests per route per round, ``--concurrency`` at a time, over ``--users`` users
(profiles already present, as in steady state). Routes are interleaved over ``--rounds`` rounds
(the order rotates) and the median requests/second is reported with ratios, plus how many ensure
queries each route made per request. A measurement, not a test: it exits 0 whatever the figures.

Run::

    .venv/bin/python bench/profile_dependency.py
    .venv/bin/python bench/profile_dependency.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

With ``--database-url`` it uses a scratch database ``profileguard_bench_dep`` and drops it after.
"""

# No `from __future__ import annotations`: the endpoints below name dependencies local to run().
import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import psycopg
from benchdb import database
from fastapi import Depends, FastAPI, Header

from profileguard import sql as sqlfiles
from profileguard.client import AsyncProfileGuard
from profileguard.config import Settings, load_settings
from profileguard.install import install
from profileguard.integrations.fastapi import RequireProfile

SCRATCH_DB = "profileguard_bench_dep"
ROUTES = ("plain", "cached", "uncached")


class CountingGuard(AsyncProfileGuard):
    calls = 0

    async def ensure(self, user_id: Any) -> dict[str, Any]:
        self.calls += 1
        return await super().ensure(user_id)


def user_id(x_user_id: Annotated[str | None, Header()] = None) -> str | None:
    return x_user_id


@contextlib.contextmanager
def scratch_database(database_url: str | None) -> Iterator[Settings]:
    with database(database_url, SCRATCH_DB) as (url, _where):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
        settings = load_settings(env={}, database_url=url)
        install(settings, create_profile_table=True)
        yield settings


def make_users(settings: Settings, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " select i::uuid, 'authenticated', 'authenticated', i || '@example.com',"
            " jsonb_build_object('full_name', 'User ' || i), now() from unnest(%s::text[]) i",
            (ids,),
        )
    return ids


async def run(args: argparse.Namespace, settings: Settings, ids: list[str]) -> dict[str, Any]:
    guard = CountingGuard(settings, max_size=args.concurrency)
    cached = RequireProfile(guard, user_id, ttl=60)
    uncached = RequireProfile(guard, user_id, ttl=0)
    app = FastAPI()

    with psycopg.connect(settings.conninfo()) as conn:
        rows = conn.execute("select id::text, to_jsonb(p) from public.profiles p").fetchall()
    known = dict(rows)

    async def from_memory(uid: Annotated[str, Depends(user_id)]) -> dict[str, Any]:
        return dict(known[uid])

    @app.get("/plain")
    async def plain(p: Annotated[dict[str, Any], Depends(from_memory)]) -> dict[str, Any]:
        return p

    @app.get("/cached")
    async def with_cache(p: Annotated[dict[str, Any], Depends(cached)]) -> dict[str, Any]:
        return p

    @app.get("/uncached")
    async def without_cache(p: Annotated[dict[str, Any], Depends(uncached)]) -> dict[str, Any]:
        return p

    rates: dict[str, list[float]] = {r: [] for r in ROUTES}
    calls: dict[str, int] = dict.fromkeys(ROUTES, 0)
    async with guard:
        await guard._pool.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def one(route: str, n: int) -> None:
                response = await client.get(f"/{route}", headers={"X-User-Id": ids[n % len(ids)]})
                response.raise_for_status()

            async def burst(route: str) -> float:
                queue = iter(range(args.requests))

                async def worker() -> None:
                    for n in queue:
                        await one(route, n)

                start = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                return args.requests / (time.perf_counter() - start)

            for route in ROUTES:  # warm-up: connections, plans, and the cache
                await burst(route)
            for round_ in range(args.rounds):
                order = ROUTES[round_ % 3 :] + ROUTES[: round_ % 3]
                for route in order:
                    before = guard.calls
                    rates[route].append(await burst(route))
                    calls[route] += guard.calls - before
    medians = {r: statistics.median(v) for r, v in rates.items()}
    per_request = {r: calls[r] / (args.requests * args.rounds) for r in ROUTES}
    return {
        "requests_per_second": medians,
        "ensure_queries_per_request": per_request,
        "rounds": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_database(args.database_url) as settings:
        ids = make_users(settings, args.users)
        result = asyncio.run(run(args, settings, ids))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rps = result["requests_per_second"]
    queries = result["ensure_queries_per_request"]
    print(
        f"{args.requests} requests x {args.rounds} rounds, concurrency {args.concurrency}, "
        f"{args.users} users (median requests/s)"
    )
    for route in ROUTES:
        print(
            f"  {route:9} {rps[route]:9.0f} req/s   {rps[route] / rps['plain']:5.2f}x plain"
            f"   {queries[route]:.3f} ensure queries/request"
        )
    print(f"  cached / uncached: {rps['cached'] / rps['uncached']:.2f}x")


if __name__ == "__main__":
    main()

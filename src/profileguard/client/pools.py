"""The clients' own connection pools: built alike, they differ only in when they open.

An async pool cannot open as it is built, so the async client opens it in `open()`, which
`async with` calls; the blocking client's pool is open from the start, so a ProfileGuard works
without `with`. `tools/async_to_sync.py` maps `async_pool` to `blocking_pool`.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from profileguard.config import Settings
from profileguard.db import APPLICATION_NAME, connect_options


def _options(settings: Settings, max_size: int) -> dict[str, Any]:
    return {
        "conninfo": settings.conninfo(),
        "min_size": 1,
        "max_size": max_size,
        "timeout": settings.connect_timeout,
        "kwargs": {"application_name": APPLICATION_NAME, **connect_options(settings)},
    }


def async_pool(settings: Settings, max_size: int) -> AsyncConnectionPool:
    """The async client's pool, not yet open: AsyncProfileGuard.open() opens it."""
    return AsyncConnectionPool(**_options(settings, max_size), open=False)


def blocking_pool(settings: Settings, max_size: int) -> ConnectionPool:
    """The blocking client's pool, open as it is built."""
    return ConnectionPool(**_options(settings, max_size), open=True)

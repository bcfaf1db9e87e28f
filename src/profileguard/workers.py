"""The registry of running workers (profileguard.workers): a cleanly stopped worker leaves it."""

from __future__ import annotations

from profileguard import sql as sqlfiles
from profileguard.config import Settings
from profileguard.db import connect


def deregister(settings: Settings, worker_id: str) -> bool:
    """Delete the row of `worker_id`; True when there was one."""
    with connect(settings) as conn, conn.transaction():
        cur = conn.execute(sqlfiles.query("deregister_worker"), {"worker_id": worker_id})
        return cur.rowcount > 0

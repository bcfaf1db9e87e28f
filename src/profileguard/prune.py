"""`profileguard prune`: remove profiles whose user no longer exists (orphans).

Orphans appear when the profile's foreign key to the users table is missing, not valid, or was
added after users were deleted. `--dry-run` lists exactly the profiles a real run removes; a real
run deletes them in key-ordered batches, re-checking each one at delete time (a user created with
that id meanwhile keeps the profile), with a bounded lock wait, and records one 'prune' event per
removed profile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from profileguard.config import Settings
from profileguard.db import connect, translate
from profileguard.installation import Installation

LOCK_TIMEOUT = "2s"


@dataclass
class PruneResult:
    """What a prune found and (unless a dry run) removed."""

    dry_run: bool
    orphans: list[str] = field(default_factory=list)
    removed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "count": len(self.orphans)}


def _orphans(
    conn: psycopg.Connection, installed: Installation, after: str | None, limit: int
) -> list[str]:
    parts = installed.parts()
    query = sql.SQL(
        "select p.{pk}::text from {profile} p"
        " where p.{pk} is not null and (%(after)s::text is null or p.{pk} > %(after)s::text::{kt})"
        " and not exists (select from {identity} u where u.{ik} = p.{pk})"
        " order by p.{pk} limit %(n)s"
    ).format(
        pk=parts["profile_key"],
        profile=parts["profile"],
        kt=parts["key_type"],
        identity=parts["identity"],
        ik=parts["identity_key"],
    )
    return [str(r[0]) for r in conn.execute(query, {"after": after, "n": limit}).fetchall()]


def prune(settings: Settings, *, dry_run: bool, batch_size: int = 1000) -> PruneResult:
    """List (dry run) or remove every profile whose user does not exist."""
    result = PruneResult(dry_run=dry_run)
    conn = connect(settings)
    try:
        installed = Installation.require(conn)
        parts = installed.parts()
        delete = sql.SQL(
            "with gone as (delete from {profile} p where p.{pk} = any(%(ids)s::text[]::{kt}[])"
            " and not exists (select from {identity} u where u.{ik} = p.{pk})"
            " returning p.{pk})"
            " insert into profileguard.events (kind, source, user_id, message)"
            " select 'prune', 'cli', g.{pk}::text, 'profile without a user removed' from gone g"
        ).format(
            pk=parts["profile_key"],
            profile=parts["profile"],
            kt=parts["key_type"],
            identity=parts["identity"],
            ik=parts["identity_key"],
        )
        after: str | None = None
        conn.rollback()
        while True:
            with conn.transaction():
                conn.execute(
                    sql.SQL("set local lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT))
                )
                batch = _orphans(conn, installed, after, batch_size)
                if batch and not dry_run:
                    result.removed += conn.execute(delete, {"ids": batch}).rowcount
            result.orphans.extend(batch)
            if len(batch) < batch_size:
                break
            after = batch[-1]
        return result
    except psycopg.Error as exc:
        raise translate(exc, context="prune") from exc
    finally:
        conn.close()


__all__ = ["PruneResult", "prune"]

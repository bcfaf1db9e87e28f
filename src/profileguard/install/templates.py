"""The SQL install renders from the templates in sql/: the mapping-dependent functions, the sync,
the trigger, the events it records."""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.config import Settings
from profileguard.installation import table_parts
from profileguard.mapping import (
    Plan,
    build_sync,
    constant_bodies,
    drift_select,
    insert_statement,
    redact_statement,
    sync_statement,
    when_changed,
)
from profileguard.sqlformat import fill, pretty

# Seed of hashtextextended() for the per-user claim locks that keep repairs by the worker and the
# in-database sweep apart (and apart from other advisory locks).
CLAIM_SEED = 0x70726F66
TRANSITION_TABLE = "pg_new_users"
# The signup trigger's wait for a lock while it records a failure (at most its lock_timeout_ms):
# a signup whose profile table and events table are both locked waits about lock_timeout_ms plus
# this, then commits.
RECORD_LOCK_MS = 50
# The UPDATE trigger's queue of changed users (a transaction-local setting) holds up to this many
# characters (about 2,000 UUIDs) before a statement's changes are synced in one pass over all.
SYNC_QUEUE_CHARS = 74_000


def template(name: str, **parts: sql.Composable) -> sql.Composed:
    return fill(sqlfiles.read(name), **parts)


def render_generated(plan: Plan) -> sql.Composed:
    """The mapping-dependent functions and the trigger, as one SQL script."""
    settings = plan.settings
    parts = table_parts(settings.identity, settings.profile, plan.key_type)
    ikey = sql.Identifier(settings.identity.key)
    new_rows = sql.Identifier(TRANSITION_TABLE)
    identity = parts["identity"]
    by_ids = sql.SQL("where u.{} = any(p_ids)").format(ikey)
    # The backfill's page range [v_from, v_to) (a TID range scan). The sweep leaves existing
    # profiles to ON CONFLICT (the same one index probe a new row costs anyway); the catch-up
    # takes only the rows written since the sweep began (age(xmin) <= v_since; frozen rows are
    # the oldest) and, as nearly all of those have a profile, skips them with NOT EXISTS first.
    pages = sql.SQL("select u.{ikey} from {identity} u where u.ctid >= v_from and u.ctid < v_to")
    pages_since = sql.SQL(
        "{pages} and pg_catalog.age(u.xmin) <= v_since"
        " and not exists (select from {profile} p where p.{pkey} = u.{ikey})"
    )
    full = insert_statement(
        plan, source=identity, where=by_ids, force_suffix=sql.SQL("p_forced"), named=True
    )
    return template(
        "generated.sql",
        **parts,
        **constant_bodies(plan),
        identity_text=sql.Literal(str(settings.identity)),
        identity_key_text=sql.Literal(settings.identity.key),
        # Whether a unique violation is retried with the forced username suffix (the mapping has
        # a username rule), else raised.
        retry_forced=sql.SQL("true" if plan.username_constraints else "false"),
        lock_timeout=sql.Literal(f"{settings.lock_timeout_ms}ms"),
        record_lock_timeout=sql.Literal(f"{min(settings.lock_timeout_ms, RECORD_LOCK_MS)}ms"),
        insert_new=pretty(insert_statement(plan, source=new_rows, optimistic=True, named=True)),
        # The retry reads the new users from the identity table (the trigger runs after them).
        insert_new_forced=sql.SQL(
            "perform profileguard.insert_profiles(array(select n.{} from {} n), true)"
        ).format(ikey, new_rows),
        insert_profiles=pretty(sql.SQL("{} returning {}").format(full, parts["profile_key"])),
        claim_seed=sql.Literal(CLAIM_SEED),
        pages=pretty(pages.format(ikey=ikey, identity=identity)),
        pages_since=pretty(
            pages_since.format(
                pages=pages.format(ikey=ikey, identity=identity),
                ikey=ikey,
                profile=parts["profile"],
                pkey=parts["profile_key"],
            )
        ),
    )


def _sync_parts(plan: Plan) -> dict[str, sql.Composable]:
    """The placeholders of sync.sql and sync_triggers.sql for the configured update policies
    and redacted columns."""
    settings = plan.settings
    sync = build_sync(plan)
    parts = table_parts(settings.identity, settings.profile, plan.key_type)
    ikey = sql.Identifier(settings.identity.key)
    nothing = sql.SQL("select null::{} as {} where false").format(
        sql.SQL(plan.key_type), parts["profile_key"]
    )
    by_ids = sql.SQL("where u.{} = any(p_ids)").format(ikey)
    plain_key = plan.key_type in ("uuid", "smallint", "integer", "bigint")
    new_key = sql.SQL("new.{}::text").format(ikey)
    by_range = sql.SQL("where (p_after is null or u.{k} > p_after) and u.{k} <= v_last").format(
        k=ikey
    )
    watched = sync.watched or (settings.identity.key,)
    return dict(
        **parts,
        lock_timeout=sql.Literal(f"{settings.lock_timeout_ms}ms"),
        record_lock_timeout=sql.Literal(f"{min(settings.lock_timeout_ms, RECORD_LOCK_MS)}ms"),
        sync_ids=pretty(
            sync_statement(
                plan,
                sync,
                by_ids,
                sql.SQL("(p_own_tx and profileguard.written_in_this_transaction(p.xmin))"),
            )
            or nothing
        ),
        redact_ids=pretty(redact_statement(plan, sync, by_ids) or nothing),
        # One pass over all (a statement past the queue): no per-row transaction check.
        sync_all=pretty(sync_statement(plan, sync, sql.SQL("")) or nothing),
        redact_all=pretty(redact_statement(plan, sync, sql.SQL("")) or nothing),
        queue_chars=sql.Literal(SYNC_QUEUE_CHARS),
        # An array literal element: keys of other types are quoted (they may hold commas).
        queued_key=new_key
        if plain_key
        else sql.SQL(
            "'\"' || pg_catalog.replace(pg_catalog.replace({}, '\\', '\\\\'), '\"', '\\\"') || '\"'"
        ).format(new_key),
        drift_ids=pretty(drift_select(plan, sync, by_ids)),
        drift_range=pretty(drift_select(plan, sync, by_range)),
        watched=sql.SQL(", ").join(sql.Identifier(c) for c in watched),
        when_changed=when_changed(sync),
    )


def render_sync(plan: Plan) -> sql.Composed:
    """The set-based sync and the drift finder (sync.sql)."""
    return template("sync.sql", **_sync_parts(plan))


def render_sync_triggers(plan: Plan) -> sql.Composed:
    """The UPDATE triggers on the identity table (sync_triggers.sql): run in the short
    transaction that may lock it."""
    return template("sync_triggers.sql", **_sync_parts(plan))


def trigger_statement(settings: Settings, *, one_line: bool = False) -> sql.Composed:
    """The statement that creates profileguard's trigger (`one_line`: as audit prints it as a
    fix, one command a line).

    CREATE OR REPLACE needs only the TRIGGER privilege on the identity table, not ownership, and
    re-enables the trigger if someone disabled it. It locks the table against the UPDATE every
    login makes: run it in a short transaction (locking.short_transaction)."""
    text = sqlfiles.read("trigger.sql").strip()
    if one_line:
        text = " ".join(line.strip() for line in text.splitlines())
    return sql.SQL(text).format(
        identity=sql.Identifier(settings.identity.schema, settings.identity.name)
    )


def config_event(source: str, message: str, detail: dict[str, Any]) -> sql.Composed:
    return sql.SQL(
        "insert into profileguard.events (kind, source, message, detail)"
        "\nvalues ('config', {}, {},\n{})"
    ).format(sql.Literal(source), sql.Literal(message), sql.Literal(json.dumps(detail, indent=2)))

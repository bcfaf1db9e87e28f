"""The SQL install renders from the templates in sql/: the mapping-dependent functions, the sync,
the trigger, the events it records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg
from pglast import ast, parse_sql
from psycopg import sql

from profileguard import sql as sqlfiles
from profileguard.config import Settings
from profileguard.installation import table_parts
from profileguard.mapping import (
    Plan,
    build_sync,
    drift_select,
    insert_statement,
    redact_statement,
    sync_statement,
    when_changed,
)

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
# The source of the config event a rendered file (`profileguard sql`) records when applied: the
# install is managed by migrations, and the worker leaves its functions to them.
MIGRATION_SOURCE = "sql"
QUERIES = "queries/replan.sql"


def template(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(sqlfiles.read(name)).format(**parts)


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
    by_pages = sql.SQL("where u.ctid >= v_from and u.ctid < v_to")
    by_pages_since = sql.SQL(
        "where u.ctid >= v_from and u.ctid < v_to and pg_catalog.age(u.xmin) <= v_since"
        " and not exists (select from {profile} p where p.{pkey} = u.{ikey})"
    ).format(ikey=ikey, profile=parts["profile"], pkey=parts["profile_key"])
    return template(
        "generated.sql",
        **parts,
        identity_text=sql.Literal(str(settings.identity)),
        identity_key_text=sql.Literal(settings.identity.key),
        # Whether a unique violation is retried with the forced username suffix (the mapping has
        # a username rule), else raised.
        retry_forced=sql.SQL("true" if plan.username_constraints else "false"),
        lock_timeout=sql.Literal(f"{settings.lock_timeout_ms}ms"),
        record_lock_timeout=sql.Literal(f"{min(settings.lock_timeout_ms, RECORD_LOCK_MS)}ms"),
        insert_new=insert_statement(plan, source=new_rows, optimistic=True),
        insert_new_forced=insert_statement(plan, source=new_rows, force_suffix=True),
        insert_ids=insert_statement(plan, source=identity, where=by_ids),
        insert_ids_forced=insert_statement(plan, source=identity, where=by_ids, force_suffix=True),
        claim_seed=sql.Literal(CLAIM_SEED),
        insert_pages=insert_statement(plan, source=identity, where=by_pages),
        insert_pages_forced=insert_statement(
            plan, source=identity, where=by_pages, force_suffix=True
        ),
        insert_pages_since=insert_statement(plan, source=identity, where=by_pages_since),
        insert_pages_since_forced=insert_statement(
            plan, source=identity, where=by_pages_since, force_suffix=True
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
        sync_ids=sync_statement(
            plan,
            sync,
            by_ids,
            sql.SQL("(p_own_tx and profileguard.written_in_this_transaction(p.xmin))"),
        )
        or nothing,
        redact_ids=redact_statement(plan, sync, by_ids) or nothing,
        # One pass over all (a statement past the queue): no per-row transaction check.
        sync_all=sync_statement(plan, sync, sql.SQL("")) or nothing,
        redact_all=redact_statement(plan, sync, sql.SQL("")) or nothing,
        queue_chars=sql.Literal(SYNC_QUEUE_CHARS),
        # An array literal element: keys of other types are quoted (they may hold commas).
        queued_key=new_key
        if plain_key
        else sql.SQL(
            "'\"' || pg_catalog.replace(pg_catalog.replace({}, '\\', '\\\\'), '\"', '\\\"') || '\"'"
        ).format(new_key),
        drift_ids=drift_select(plan, sync, by_ids),
        drift_range=drift_select(plan, sync, by_range),
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


def trigger_statement(settings: Settings) -> sql.Composed:
    """The statement that creates profileguard's trigger (one line: audit prints it as a fix).

    CREATE OR REPLACE needs only the TRIGGER privilege on the identity table, not ownership, and
    re-enables the trigger if someone disabled it. It locks the table against the UPDATE every
    login makes: run it in a short transaction (locking.short_transaction)."""
    return template(
        "trigger.sql", identity=sql.Identifier(settings.identity.schema, settings.identity.name)
    )


def config_event(source: str, message: str, detail: dict[str, Any]) -> sql.Composed:
    return sql.SQL(
        "insert into profileguard.events (kind, source, message, detail)"
        "\nvalues ('config', {}, {},\n{})"
    ).format(sql.Literal(source), sql.Literal(message), sql.Literal(json.dumps(detail)))


def differing_functions(conn: psycopg.Connection, rendered: Sequence[sql.Composable]) -> list[str]:
    """The functions `rendered` creates whose body differs from every installed profileguard
    function of that name (or that are not installed): what running it would change. Read-only:
    the rendered text is parsed (pglast), not run."""
    installed: dict[str, set[str]] = {}
    for name, body in conn.execute(sqlfiles.query("installed_bodies", QUERIES)).fetchall():
        installed.setdefault(str(name), set()).add(str(body))
    changed = set()
    for part in rendered:
        for raw in parse_sql(part.as_string(conn)):
            node = raw.stmt
            if not isinstance(node, ast.CreateFunctionStmt):
                continue
            name = (node.funcname or ())[-1].sval
            body = next(o.arg[0].sval for o in node.options or () if o.defname == "as")
            if body not in installed.get(name, set()):
                changed.add(name)
    return sorted(changed)

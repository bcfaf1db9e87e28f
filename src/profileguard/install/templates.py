"""The SQL install renders from the templates in sql/: the mapping-dependent functions, the sync,
the trigger, the events it records."""

from __future__ import annotations

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
    constant_bodies,
    drift_select,
    insert_statement,
    lean_statement,
    redact_statement,
    reserved_confusable_test,
    sync_statement,
    username_base_query,
    when_changed,
)
from profileguard.mapping.guards import deferred_check
from profileguard.mapping.insert import ALL_ROWS, RULE_NEEDED
from profileguard.sqlformat import WIDTH, Formatted, fill, json_text, pretty, wrapped

# Seed of hashtextextended() for the per-user claim locks that keep repairs by the worker and the
# in-database sweep apart (and apart from other advisory locks).
CLAIM_SEED = 0x70726F66
TRANSITION_TABLE = "pg_new_users"
# The UPDATE trigger's queue of changed users (a transaction-local setting) holds up to this many
# characters (about 2,000 UUIDs) before a statement's changes are synced in one pass over all.
SYNC_QUEUE_CHARS = 74_000
# The source of the config event a rendered file (`profileguard sql`) records when applied: the
# install is managed by migrations, and the worker leaves its functions to them.
MIGRATION_SOURCE = "sql"
QUERIES = "queries/replan.sql"
# The users a sync could not record, named in its notification up to this size (a payload holds
# under 8,000 bytes; about 170 UUIDs).
NOTIFY_IDS_BYTES = 6_500


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
    budget = plan.guards.budget(settings.lock_timeout_ms)
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
        reserved_confusable=pretty(
            sql.SQL("select {}").format(reserved_confusable_test(plan, sql.SQL("$1"), named=True))
        ),
        username_base=pretty(username_base_query(plan, sql.SQL("$1"), named=True)),
        identity_text=sql.Literal(str(settings.identity)),
        identity_key_text=sql.Literal(settings.identity.key),
        # Whether a unique violation is retried with the forced username suffix (the mapping has
        # a username rule), else raised.
        retry_forced=sql.SQL("true" if plan.username_constraints else "false"),
        # lock_timeout_ms is the sign-up's budget for all its lock waits (mapping/guards.py).
        lock_timeout=sql.Literal(f"{budget.per_wait_ms}ms"),
        record_lock_timeout=sql.Literal(f"{budget.record_per_wait_ms}ms"),
        check_deferred=deferred_check(plan.guards, 8),
        check_deferred_nested=deferred_check(plan.guards, 12),
        **_trigger_inserts(plan, new_rows),
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


def _trigger_inserts(plan: Plan, new_rows: sql.Identifier) -> dict[str, sql.Composable]:
    """The sign-up trigger's statements: `insert_new` its first try, `insert_new_forced` what its
    retry after a unique violation runs, `insert_rule` what both run next.

    With a lean insert whose rows ON CONFLICT can arbitrate, the rows it leaves to the username
    rule (RULE_NEEDED on) go through the retry's own statement (mapping/insert.py `_retry`), which
    handles a taken key or name row by row; the retry sets RULE_NEEDED to ALL_ROWS and runs that
    statement over every new row, in key order: it is written once. Otherwise the first try is
    the optimistic insert (the lean one and then the rows it left) and the retry its own statement
    (`_retried`)."""
    lean = lean_statement(plan, source=new_rows, named=True)
    if lean is None:
        first: sql.Composable = pretty(
            insert_statement(plan, source=new_rows, optimistic=True, named=True)
        )
        return dict(
            insert_new=first, insert_new_forced=_retried(plan, new_rows), insert_rule=sql.SQL("")
        )
    if not _arbiters(plan):
        rule = pretty(
            insert_statement(plan, source=new_rows, optimistic=True, named=True, rule_only=True)
        )
        return dict(
            insert_new=pretty(lean),
            insert_new_forced=_retried(plan, new_rows),
            insert_rule=_when_flagged(rule, "= 'on'"),
        )
    rule = pretty(
        insert_statement(
            plan,
            source=new_rows,
            where=_key_order(plan),
            optimistic=True,
            named=True,
            retry=True,
            rule_only=True,
        )
    )
    return dict(
        insert_new=pretty(lean),
        insert_new_forced=sql.SQL("perform pg_catalog.set_config({}, {}, true)").format(
            sql.Literal(RULE_NEEDED), sql.Literal(ALL_ROWS)
        ),
        insert_rule=_when_flagged(rule, "<> ''"),
    )


def _when_flagged(statement: Formatted, test: str) -> sql.SQL:
    """`statement` run when RULE_NEEDED passes `test` (the lean insert's WHERE turned it on, or
    the retry set it), then RULE_NEEDED cleared; laid out on its own lines at column 12 (not a
    `Formatted`: its placeholder follows `end if;`)."""
    column = 12
    inner = wrapped(statement.text, WIDTH - column - 4).replace("\n", "\n" + " " * (column + 4))
    pad = "\n" + " " * column
    return sql.SQL(
        f"{pad}-- The names the lean insert left to the username rule (its WHERE turned the flag"
        f" on){pad}-- or, on the retry, all."
        f"{pad}if pg_catalog.current_setting('{RULE_NEEDED}', true) {test} then"
        f"{pad}    {inner};"
        f"{pad}    perform pg_catalog.set_config('{RULE_NEEDED}', '', true);"
        f"{pad}end if;"
    )


def _arbiters(plan: Plan) -> bool:
    """Whether ON CONFLICT can take every unique index of the profile table as an arbiter (not a
    deferrable unique or exclusion constraint)."""
    return not any(d.kind in ("p", "u", "x") for d in plan.guards.deferrable)


def _key_order(plan: Plan) -> sql.Composable:
    return sql.SQL("order by u.{}").format(sql.Identifier(plan.settings.identity.key))


def _retried(plan: Plan, new_rows: sql.Identifier) -> sql.Composable:
    """The trigger's retry after a unique violation without the lean insert's: with a username
    rule, one statement over the new rows that sends only the rows whose key or name was taken
    through the collision path (mapping/insert.py `_retry`), read in key order; otherwise, and
    when a deferrable unique or exclusion constraint cannot be an ON CONFLICT arbiter, the full
    statement over their ids (read from the identity table: the trigger runs after them)."""
    constraints = plan.username_constraints
    if constraints is not None and constraints.column in plan.mapping and _arbiters(plan):
        return pretty(
            insert_statement(
                plan,
                source=new_rows,
                where=_key_order(plan),
                optimistic=True,
                named=True,
                retry=True,
            )
        )
    return sql.SQL(
        "perform profileguard.insert_profiles(array(select n.{} from {} n), true)"
    ).format(sql.Identifier(plan.settings.identity.key), new_rows)


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
    by_ids = sql.SQL("u.{} = any(p_ids)").format(ikey)
    plain_key = plan.key_type in ("uuid", "smallint", "integer", "bigint")
    new_key = sql.SQL("new.{}::text").format(ikey)
    watched = sync.watched or (settings.identity.key,)
    budget = plan.guards.budget(settings.lock_timeout_ms)
    own_tx = sql.SQL("(p_own_tx and profileguard.written_in_this_transaction(p.xmin))")
    return dict(
        **parts,
        lock_timeout=sql.Literal(f"{budget.sync_per_wait_ms}ms"),
        # The failure path records into the events table only: one wait.
        record_lock_timeout=sql.Literal(f"{budget.record_ms}ms"),
        check_deferred=deferred_check(plan.guards, 4),
        sync_ids=pretty(sync_statement(plan, sync, by_ids, own_tx) or nothing),
        redact_ids=pretty(redact_statement(plan, sync, by_ids) or nothing),
        # One pass over all (a statement past the queue): no per-row transaction check.
        sync_all=pretty(sync_statement(plan, sync, None) or nothing),
        redact_all=pretty(redact_statement(plan, sync, None) or nothing),
        queue_chars=sql.Literal(SYNC_QUEUE_CHARS),
        notify_ids_bytes=sql.Literal(NOTIFY_IDS_BYTES),
        # An array literal element: keys of other types are quoted (they may hold commas).
        queued_key=new_key
        if plain_key
        else sql.SQL(
            "'\"' || pg_catalog.replace(pg_catalog.replace({}, '\\', '\\\\'), '\"', '\\\"') || '\"'"
        ).format(new_key),
        drift=pretty(drift_select(plan, sync, sql.SQL("u.{} = any(v_ids)").format(ikey))),
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
    ).format(sql.Literal(source), sql.Literal(message), sql.Literal(json_text(detail)))


def differing_functions(conn: psycopg.Connection, rendered: Sequence[sql.Composable]) -> list[str]:
    """The functions `rendered` creates whose body or SET clause differs from every installed
    profileguard function of that name (or that are not installed): what running it would change.
    Read-only: the rendered text is parsed (pglast), not run."""
    installed: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
    rows = conn.execute(sqlfiles.query("installed_bodies", QUERIES)).fetchall()
    for name, body, config in rows:
        installed.setdefault(str(name), set()).add((str(body), tuple(config or ())))
    changed = set()
    for part in rendered:
        for raw in parse_sql(part.as_string(conn)):
            node = raw.stmt
            if not isinstance(node, ast.CreateFunctionStmt):
                continue
            name = (node.funcname or ())[-1].sval
            options = node.options or ()
            body = next(o.arg[0].sval for o in options if o.defname == "as")
            config = tuple(_setting(o.arg) for o in options if o.defname == "set")
            if (body, config) not in installed.get(name, set()):
                changed.add(name)
    return sorted(changed)


def _setting(node: ast.VariableSetStmt) -> str:
    """A function's SET option as pg_proc.proconfig holds it (name=value, lists comma-joined)."""
    values = (_constant(a.val) for a in node.args or ())
    return f"{node.name}={', '.join(values)}"


def _constant(value: ast.Node) -> str:
    for field in ("sval", "fval", "ival"):
        if hasattr(value, field):
            return str(getattr(value, field))
    return str(value)

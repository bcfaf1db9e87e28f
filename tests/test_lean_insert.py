"""Property: the sign-up trigger's lean insert gives every row it takes the profile the full
username rule gives it, and leaves every other row to the full insert.

Each Hypothesis example is a batch of sign-ups (metadata, provider, email) whose names sit on
both sides of the lean insert's test: plain ASCII names (reserved ones in any case, too short,
exactly as long as the column allows and one longer, inner spaces), the JSON text of arrays,
objects and booleans, controls, edge spaces, accented and full-width letters. Each row is put
alone in a transition-table stand-in (a temporary table named as the trigger's) and given, each
in a rolled-back savepoint, to the lean insert, to the full optimistic insert (the trigger's
first try without the lean one), to that insert of the rows the lean one leaves to the rule, and
to insert_profiles (the full insert every other path calls): the lean insert either writes the
profile both full ones write, leaves the flag off and the rule's insert writes nothing, or writes
nothing, turns the flag on, and the rule's insert writes that profile. Three configurations: the
default one, a lowercasing policy on a NOT NULL username, and a mapping whose typed name comes
before the one a provider writes (the provenance CASE).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import pytest
from conftest import shape_db
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg import sql

from profileguard.config import Settings, load_settings, parse_mapping
from profileguard.install import install
from profileguard.mapping import build_plan, insert_statement, lean_statement
from profileguard.mapping.insert import RULE_NEEDED

BATCHES = int(os.environ.get("PROFILEGUARD_PROPERTY_BATCHES", "20"))
BATCH_SIZE = 40
NEW_ROWS = sql.Identifier("pg_new_users")
TAKEN = {"lean": 0, "rule": 0}  # rows each side took, over all examples and configurations

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("", {}),
    "lowercase_not_null": (
        "create table public.profiles (id uuid primary key references auth.users on delete"
        " cascade, username varchar(20) not null unique, full_name text, avatar_url text)",
        {"lowercase": True},
    ),
    "typed_first": (
        "",
        {
            "mapping": {
                "full_name": ["raw_user_meta_data.full_name"],
                "avatar_url": ["raw_user_meta_data.avatar_url"],
                "username": ["email|localpart", "raw_user_meta_data.user_name"],
            }
        },
    ),
}

ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=24)
names = st.one_of(
    ASCII,
    st.sampled_from(
        [
            "admin",
            "Admin",
            "ROOT",
            "support",
            "ab",
            "x",
            "true",
            "false",
            "null",
            "[1]",
            "{}",
            "\\back",
            "]close",
            "john doe",
            " padded ",
            "a" * 20,
            "a" * 21,
            "b" * 64,
            "c" * 65,
            "tab\there",
            "ctl\x01",
            "émile",
            "\uff34orvalds",
            "\u202etorvalds",
            "zero\u200bwidth",
        ]
    ),
    st.text(max_size=12).map(lambda s: s.replace("\x00", "")),
)
values = st.one_of(
    names,
    st.none(),
    st.integers(-1000, 10**12),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=1),
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "user_name": values,
        "preferred_username": values,
        "full_name": values,
        "avatar_url": values,
    },
)
providers = st.sampled_from(["github", "email", "phone", "anonymous", None])
signups = st.tuples(documents, providers, st.one_of(st.none(), names))


@dataclass
class Config:
    """One configuration in its own database: the lean insert and the two full ones, rendered
    for the transition table's name."""

    name: str
    dbname: str
    url: str
    lean: sql.Composable
    full: sql.Composable
    rule_only: sql.Composable


def _settings(url: str, policy: dict[str, Any]) -> Settings:
    settings = load_settings(env={}, database_url=url)
    if "mapping" in policy:
        settings = replace(
            settings, mapping=parse_mapping(policy["mapping"]), mapping_is_default=False
        )
    if "lowercase" in policy:
        settings = replace(settings, username=replace(settings.username, lowercase=True))
    return settings


@pytest.fixture(scope="module")
def configs(server_dsn: str, template_db: str) -> Iterator[list[Config]]:
    made: list[Config] = []
    try:
        for name, (ddl, policy) in CONFIGS.items():
            dbname = f"pg_lean_{os.getpid()}_{name}"
            url = shape_db(server_dsn, template_db, dbname, ddl or "select")
            settings = _settings(url, policy)
            install(settings, create_profile_table=not ddl)
            with psycopg.connect(url) as conn:
                plan = build_plan(conn, settings)
            lean = lean_statement(plan, source=NEW_ROWS, named=True)
            assert lean is not None, f"{name}: no lean insert"
            full = insert_statement(plan, source=NEW_ROWS, optimistic=True, named=True)
            rule_only = insert_statement(
                plan, source=NEW_ROWS, optimistic=True, named=True, rule_only=True
            )
            made.append(Config(name, dbname, url, lean, full, rule_only))
        yield made
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            for config in made:
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(
                        sql.Identifier(config.dbname)
                    )
                )


def _outcome(conn: psycopg.Connection, statement: sql.Composable, key: uuid.UUID) -> Any:
    """The profile `statement` writes for `key` (None: none), and the flag after it; rolled
    back. An error is the outcome too (its SQLSTATE)."""
    try:
        with conn.transaction():
            conn.execute(statement)
            row = conn.execute(
                "select to_jsonb(p) - 'updated_at' from public.profiles p where p.id = %s", (key,)
            ).fetchone()
            flag = conn.execute("select current_setting(%s, true)", (RULE_NEEDED,)).fetchone()
            raise _Rollback((row[0] if row else None, flag[0] if flag else None))
    except _Rollback as done:
        return done.outcome
    except psycopg.Error as exc:
        return ("error", exc.sqlstate)


class _Rollback(Exception):
    def __init__(self, outcome: Any):
        super().__init__()
        self.outcome = outcome


@hsettings(
    max_examples=BATCHES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=st.lists(signups, min_size=BATCH_SIZE, max_size=BATCH_SIZE))
def test_the_lean_insert_gives_each_row_it_takes_the_full_rules_profile(
    configs: list[Config], batch: list[tuple[dict[str, Any], str | None, str | None]]
) -> None:
    for config in configs:
        with psycopg.connect(config.url) as conn:
            # No trigger fires (replica): each statement is run by hand. The identity row is in
            # auth.users, as when the trigger runs (the rule's rare path reads it from there).
            conn.execute("set session_replication_role = replica")
            conn.execute("create temp table pg_new_users (like auth.users including defaults)")
            for meta, provider, local in batch:
                key = uuid.uuid4()
                email = f"{local.replace(chr(0), '')[:60]}@example.com" if local else None
                conn.execute("truncate pg_new_users")
                conn.execute(
                    "insert into pg_new_users (id, email, raw_user_meta_data, raw_app_meta_data)"
                    " values (%s, %s, %s, %s)",
                    (key, email, json.dumps(meta), json.dumps({"provider": provider})),
                )
                conn.execute(
                    "insert into auth.users (id, email, raw_user_meta_data, raw_app_meta_data)"
                    " select id, email, raw_user_meta_data, raw_app_meta_data from pg_new_users"
                )
                case = (config.name, meta, provider, email)
                full, _ = _outcome(conn, config.full, key)
                assert full not in (None, "error"), case  # a lone new row always gets one
                repaired = sql.SQL("select profileguard.insert_profiles(array[{}]::uuid[])").format(
                    key
                )
                assert _outcome(conn, repaired, key)[0] == full, case
                lean, flag = _outcome(conn, config.lean, key)
                TAKEN["lean" if lean is not None else "rule"] += 1
                if lean is not None:
                    assert (lean, flag in (None, "")) == (full, True), case
                else:
                    assert flag == "on", case  # left to the rule, and said so
                # The trigger's insert of the rows left to the rule takes exactly the others.
                rule, _ = _outcome(conn, config.rule_only, key)
                assert rule == (None if lean is not None else full), case
                conn.execute("delete from auth.users where id = %s", (key,))
            conn.rollback()


def test_both_sides_took_many_rows() -> None:
    """Runs after the property test (file order): the documents reached both statements."""
    total = BATCHES * BATCH_SIZE * len(CONFIGS)
    assert TAKEN["lean"] >= total // 2 and TAKEN["rule"] >= total // 20, TAKEN

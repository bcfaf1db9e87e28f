"""Property matrix: generated metadata documents x the profile tables people have.

Each Hypothesis example is a batch of sign-ups (metadata, provider, email) from a strategy that
favours what breaks usernames: shared names (collisions), reserved names, bidi overrides,
control and zero-width characters, full-width and accented letters, emoji, very long names.
Every batch goes into each of six table shapes, each in its own database with profileguard
installed: most of it in one bulk statement, some as single sign-ups, some as concurrent
sign-ups from several connections. After each batch, for every shape: every sign-up committed,
every user has a profile, no failure was recorded, and every username is clean (no control,
format or separator characters, NFKC, not reserved nor confusable with a reserved name, at most 64
characters) and fits the table; an array or an object is never a name, and a user who gave a name
with a visible character gets one.

BATCHES x BATCH_SIZE documents per shape (the default: 20 x 100 = 2,000).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from conftest import shape_db
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg import sql

from profileguard.config import DEFAULT_RESERVED, Settings, load_settings
from profileguard.install import install
from profileguard.mapping import INVISIBLE_CATEGORIES
from profileguard.mapping.confusables import confusable_table, skeleton

BATCHES = int(os.environ.get("PROFILEGUARD_PROPERTY_BATCHES", "20"))
BATCH_SIZE = 100
SINGLE = 10  # of each batch, signed up one statement each
CONCURRENT = 20  # of each batch, signed up by 4 connections at once; the rest in one statement
THREADS = 4

SHAPES = {
    "starter": "create table public.profiles (id uuid not null references auth.users on delete"
    " cascade primary key, updated_at timestamptz, username text unique,"
    " full_name text, avatar_url text, website text,"
    " constraint username_length check (char_length(username) >= 3))",
    "lower_unique": "create table public.profiles (id uuid primary key references auth.users"
    " on delete cascade, username text, full_name text, avatar_url text);"
    " create unique index profiles_username_lower on public.profiles"
    " (lower(username))",
    "regex_check": "create table public.profiles (id uuid primary key references auth.users"
    " on delete cascade, username text unique"
    " check (username ~ '^[a-z0-9_]{3,24}$'), full_name text, avatar_url text)",
    "varchar16_text_keys": "create table public.accounts (id text primary key, email text,"
    " raw_user_meta_data jsonb, raw_app_meta_data jsonb);"
    " create table public.members (id text primary key references"
    " public.accounts on delete cascade, username varchar(16) unique"
    " not null, full_name text, avatar_url text)",
    "partial_unique": "create table public.profiles (id uuid primary key references auth.users"
    " on delete cascade, username text, full_name text, avatar_url text,"
    " deleted_at timestamptz); create unique index profiles_live_username"
    " on public.profiles (username) where deleted_at is null",
    "not_null_default": "create table public.profiles (id uuid primary key references"
    " auth.users on delete cascade, username text not null default"
    " ('user_' || md5(random()::text)) unique, full_name text not null"
    " default '', avatar_url text)",
}

# Names many documents share, so batches collide with each other and with earlier batches.
COMMON = [
    "torvalds",
    "Torvalds",
    "TORVALDS",
    "ada",
    "grace hopper",
    "Grace Hopper",
    "john.doe",
    "admin",
    "Admin",
    "root",
    "support",
    "x",
    "ab",
    "émile",
    "ÉMILE",
    "\uff34\uff4f\uff52\uff56\uff41\uff4c\uff44\uff53",  # full-width Torvalds
    "\u202etorvalds",
    "torvalds\u200b",
    " torvalds ",
    "tor\x01valds",
    "🦄",
    "🦄🦄🦄🦄",
    "李小龍",
    "محمد",
    "a" * 30,
    "very_long_name_shared_prefix_1",
    "very_long_name_shared_prefix_2",
    "user",
    "user_1",
    "\u01c5emal",
    "\ufb01nn",
    "\u210cilbert",
    "\u0430dmin",  # a Cyrillic a
    "admi\u0307n",  # a combining dot above the i
    "r\u043e\u043eT",  # Cyrillic o's
]
TRICKY = "".join(
    chr(c)
    for c in [
        *range(0x20, 0x7F),
        0x00A0,
        0x00AD,
        0x0130,
        0x0301,
        0x061C,
        0x200B,
        0x200D,
        0x200E,
        0x2028,
        0x202A,
        0x202E,
        0x2066,
        0x2069,
        0x3000,
        0xFEFF,
        0xFF21,
        0x1F984,
        0x0001,
        0x001B,
        0x007F,
        0x0085,
        0x00E9,
        0x0065,
        0x1100,
        0x1161,
        0xE0041,
    ]
)
names = st.one_of(
    st.sampled_from(COMMON),
    st.text(st.sampled_from(TRICKY), min_size=0, max_size=12),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20),
    st.builds(lambda s, n: s * n, st.sampled_from(["x", "🦄", "ab "]), st.integers(20, 400)),
)
values = st.one_of(
    names, st.none(), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2)
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "user_name": values,
        "preferred_username": values,
        "full_name": values,
        "name": values,
        "avatar_url": values,
        "custom_claims": st.fixed_dictionaries({}, optional={"global_name": values}),
    },
)
providers = st.sampled_from(["github", "google", "discord", "email", "phone", "anonymous", None])
signups = st.tuples(documents, providers, st.one_of(st.none(), names))
batches = st.lists(signups, min_size=BATCH_SIZE, max_size=BATCH_SIZE)

RESERVED = {n.lower() for n in DEFAULT_RESERVED}
CONFUSABLES = confusable_table(sorted(RESERVED))
_counter = itertools.count()


@dataclass
class Shape:
    """One table shape in its own database, with profileguard installed."""

    name: str
    dbname: str
    url: str
    settings: Settings
    users: str  # the identity table
    profiles: str
    text_keys: bool

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)


@pytest.fixture(scope="module")
def shapes(server_dsn: str, template_db: str) -> Iterator[dict[str, Shape]]:
    made: dict[str, Shape] = {}
    try:
        for name, ddl in SHAPES.items():
            dbname = f"pg_prop_{os.getpid()}_{name}"
            url = shape_db(server_dsn, template_db, dbname, ddl)
            text_keys = name == "varchar16_text_keys"
            overrides = (
                {"identity_table": "public.accounts", "profile_table": "public.members"}
                if text_keys
                else {}
            )
            settings = load_settings(env={}, database_url=url, **overrides)
            install(settings)
            made[name] = Shape(
                name,
                dbname,
                url,
                settings,
                "public.accounts" if text_keys else "auth.users",
                "public.members" if text_keys else "public.profiles",
                text_keys,
            )
        yield made
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            for shape in made.values():
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(
                        sql.Identifier(shape.dbname)
                    )
                )


def _rows(shape: Shape, batch: list[tuple[Any, Any, Any]]) -> list[tuple[Any, ...]]:
    """(key, email, metadata json, app metadata json) per sign-up of this batch."""
    rows = []
    for meta, provider, local in batch:
        n = next(_counter)
        key: Any = f"tenant-000000000-{n:08d}" if shape.text_keys else uuid.uuid4()
        email = None
        if local is not None:
            cleaned = local.replace("\x00", "")[:60]
            email = f"{cleaned}@d{n}.example.com"
        app = json.dumps({"provider": provider} if provider else {})
        rows.append((key, email, json.dumps(meta), app))
    return rows


def _insert(shape: Shape, conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> None:
    key_type = "text" if shape.text_keys else "uuid"
    extra = "" if shape.text_keys else ", aud, role"
    extra_values = "" if shape.text_keys else ", 'authenticated', ''"
    conn.execute(
        f"insert into {shape.users} (id, email, raw_user_meta_data, raw_app_meta_data{extra})"
        f" select r.id, r.email, r.meta::jsonb, r.app::jsonb{extra_values}"
        f" from unnest(%s::{key_type}[], %s::text[], %s::text[], %s::text[])"
        " as r(id, email, meta, app)",
        ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]),
    )


def _sign_up(shape: Shape, rows: list[tuple[Any, ...]]) -> None:
    bulk, single, concurrent = (
        rows[SINGLE + CONCURRENT :],
        rows[:SINGLE],
        rows[SINGLE : SINGLE + CONCURRENT],
    )
    with shape.connect() as conn:
        _insert(shape, conn, bulk)
        for row in single:
            _insert(shape, conn, [row])
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(part: list[tuple[Any, ...]]) -> None:
        try:
            with shape.connect() as conn:
                start.wait(timeout=60)
                for row in part:
                    _insert(shape, conn, [row])
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(concurrent[i::THREADS],)) for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [], f"{shape.name}: a sign-up failed: {errors[:3]}"


def _invisible(text: str) -> list[str]:
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in INVISIBLE_CATEGORIES]


def _names_given(meta: str) -> list[str]:
    """The username sources of a document that are names (neither arrays nor objects), as
    text."""
    document = json.loads(meta)
    values = [document.get(key) for key in ("user_name", "preferred_username")]
    return [
        v if isinstance(v, str) else json.dumps(v)
        for v in values
        if v is not None and not isinstance(v, list | dict)
    ]


def _visible(text: str) -> bool:
    return any(unicodedata.category(c) not in INVISIBLE_CATEGORIES | {"Zs"} for c in text)


def _check(shape: Shape, rows: list[tuple[Any, ...]]) -> None:
    keys = [r[0] for r in rows]
    key_type = "text" if shape.text_keys else "uuid"
    with shape.connect() as conn:
        missing, failures = conn.execute(
            f"select (select count(*) from {shape.users} u where u.id = any(%(k)s::{key_type}[])"
            f"   and not exists (select from {shape.profiles} p where p.id = u.id)),"
            " (select count(*) from profileguard.events where kind = 'failure')",
            {"k": keys},
        ).fetchone()
        users = conn.execute(
            f"select count(*) from {shape.users} where id = any(%s::{key_type}[])", (keys,)
        ).fetchone()
        given = {
            (str(r[0]) if shape.text_keys else r[0]): r[1]
            for r in conn.execute(
                f"select id, username from {shape.profiles} where id = any(%s::{key_type}[])",
                (keys,),
            )
        }
        names = list(given.values())
    assert users == (len(keys),), f"{shape.name}: sign-ups did not all commit"
    assert (missing, failures) == (0, 0), f"{shape.name}: missing {missing}, failed {failures}"
    for key, _, meta, _ in rows:
        name, offered = given[key], _names_given(meta)
        # Arrays and objects are no names; a name empty after cleaning falls through.
        if name is not None and name.startswith("["):
            assert any("[" in text for text in offered), (shape.name, name)
        if any(_visible(text) for text in offered):
            assert name is not None, (shape.name, meta)
    for name in names:
        if name is None:
            continue
        assert not _invisible(name), (shape.name, name, _invisible(name))
        assert unicodedata.is_normalized("NFKC", name), (shape.name, name)
        assert name == name.strip(), (shape.name, name)
        assert name.lower() not in RESERVED, (shape.name, name)
        if not name.isascii():  # nor, when not plain ASCII, confusable with a reserved name
            assert skeleton(name, CONFUSABLES) not in RESERVED, (shape.name, name)
        assert 1 <= len(name) <= 64, (shape.name, name)


@hsettings(
    max_examples=BATCHES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(batch=batches)
def test_every_signup_of_every_shape_gets_a_clean_profile(
    shapes: dict[str, Shape], batch: list[tuple[Any, Any, Any]]
) -> None:
    for shape in shapes.values():
        rows = _rows(shape, batch)
        _sign_up(shape, rows)
        _check(shape, rows)


def test_the_matrix_covered_enough_documents(shapes: dict[str, Shape]) -> None:
    """Runs after the property test (file order): at least 2,000 documents per shape."""
    for shape in shapes.values():
        with shape.connect() as conn:
            row = conn.execute(
                f"select count(*), (select count(*) from {shape.profiles}) from {shape.users}"
            ).fetchone()
        assert row is not None and row[0] == row[1] >= BATCHES * BATCH_SIZE, (shape.name, row)

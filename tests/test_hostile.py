"""Hostile signups: whatever raw_user_meta_data and email a signup carries, the signup commits and
the user ends up with a profile or a recorded failure (never neither), and nothing is dropped.
"""

from __future__ import annotations

import functools
import json
import random
import uuid
from typing import Any

import psycopg
from conftest import TestDB
from hypothesis import HealthCheck, currently_in_test_context, event, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from profileguard.client import ProfileGuard
from profileguard.errors import ProfileCreationError
from profileguard.install import set_enabled
from profileguard.installation import TRIGGER_NAME

HYPOTHESIS = hsettings(
    max_examples=60,
    deadline=None,
    # One database per test function, shared by its examples.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

BATCH = hsettings(HYPOTHESIS, max_examples=30)

PAYLOADS = [
    "'; drop table public.profiles; --",
    '"; drop table public.profiles; --',
    "$pg$; drop table public.profiles; $pg$",
    "$$ || pg_sleep(10) || $$",
    "$1",
    "%s %(uid)s {}",
    "\\x00\\u0000",
    "robert'); delete from auth.users; --",
    "' or 1=1 --",
    "admin'--",
    "\u202eevil\u202c",  # RTL override
    "مرحبا بالعالم",
    "שלום",
    "👩‍👩‍👧‍👦🏳️‍🌈💥",
    "e\u0301\u0301\u0301",
    "\ufeff\u200b\u200d",
    " ",
    "",
    "ab",
    "Ab_",
]
KNOWN_KEYS = [
    "full_name",
    "name",
    "user_name",
    "preferred_username",
    "avatar_url",
    "picture",
    "custom_claims",
    "global_name",
    "email",
]
# PostgreSQL text and jsonb reject NUL; lone surrogates are not valid Unicode text.
CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
WIDE = "".join(chr(c) for c in [*range(0x20, 0x7F), *range(0xA0, 0x800), 0x202E, 0x1F4A5])


@functools.cache
def _random_text(seed: int) -> str:
    return "".join(random.Random(seed).choices(WIDE, k=100_000))


huge_text = st.one_of(
    st.builds(lambda s: (s * 100_000)[:100_000], st.text(CHARS, min_size=1, max_size=5)),
    st.integers(0, 15).map(_random_text),  # incompressible
)
texts = st.one_of(st.text(CHARS, max_size=40), st.sampled_from(PAYLOADS))
keys = st.one_of(
    st.sampled_from(KNOWN_KEYS), st.sampled_from(PAYLOADS), st.text(CHARS, max_size=20)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=12,
)
# 100k-character strings go where the mapping reads (a few per document, not every leaf).
field_values = st.one_of(json_values, huge_text)
known_shape = st.fixed_dictionaries(
    {},
    optional={
        "full_name": field_values,
        "name": field_values,
        "user_name": field_values,
        "preferred_username": field_values,
        "avatar_url": field_values,
        "picture": field_values,
        "custom_claims": st.one_of(
            json_values, st.fixed_dictionaries({}, optional={"global_name": field_values})
        ),
    },
)
# Anything at top level: objects (Supabase's usual shape), arrays, strings, numbers, null.
metas = st.one_of(
    known_shape, st.dictionaries(keys, json_values, max_size=6), json_values, huge_text
)
emails = st.one_of(
    st.none(),
    st.sampled_from(PAYLOADS),
    st.text(CHARS, max_size=60),
    st.builds(
        lambda local, host: f"{local}@{host}",
        st.text(CHARS, max_size=60),
        st.sampled_from(["example.com", "x", ""]),
    ),
).filter(lambda e: e is None or len(e) <= 255)  # auth.users.email is varchar(255)

SIGNUP_SQL = (
    "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
    " select r.id, 'authenticated', '', r.email, r.meta::jsonb, now()"
    " from unnest(%s::uuid[], %s::text[], %s::text[]) as r(id, email, meta)"
)


def reset(db: TestDB) -> None:
    """Examples share one database: start each from no users, no profiles, no events."""
    with db.connect() as conn:
        conn.execute("delete from auth.users")  # profiles go with them (on delete cascade)
        conn.execute("delete from profileguard.events")


def signup_raw(
    db: TestDB, rows: list[tuple[Any, str | None]], *, sql_null: bool = False
) -> list[uuid.UUID]:
    """Sign up users in ONE statement, metadata given as any JSON value (or SQL NULL)."""
    ids = [uuid.uuid4() for _ in rows]
    metas = [None if sql_null else json.dumps(meta, ensure_ascii=False) for meta, _ in rows]
    with db.connect() as conn:
        conn.execute(SIGNUP_SQL, (ids, [email for _, email in rows], metas))
        conn.execute("update auth.users set role = 'authenticated' where id = any(%s)", (ids,))
    return ids


def outcome(db: TestDB, uid: uuid.UUID) -> tuple[bool, bool, int]:
    """(user exists, has a profile, failure rows) for one user."""
    with db.connect() as conn:
        row = conn.execute(
            "select exists (select from auth.users where id = %(id)s),"
            " exists (select from public.profiles where id = %(id)s),"
            " (select count(*) from profileguard.events"
            "   where kind = 'failure' and user_id = %(id)s::text)",
            {"id": uid},
        ).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1]), int(row[2])


def assert_intact(db: TestDB) -> None:
    with db.connect() as conn:
        row = conn.execute(
            "select to_regclass('public.profiles') is not null,"
            " to_regclass('auth.users') is not null,"
            " to_regprocedure('profileguard.ensure_profile(uuid,text)') is not null,"
            f" (select count(*) from pg_trigger where tgname = '{TRIGGER_NAME}')"
        ).fetchone()
    assert row == (True, True, True, 1)


def assert_served(db: TestDB, uid: uuid.UUID) -> None:
    exists, has_profile, failures = outcome(db, uid)
    assert exists, "the signup must commit"
    # A profile, or a recorded failure: exactly one of them.
    assert has_profile != (failures > 0), (has_profile, failures)
    if currently_in_test_context():
        event("profile" if has_profile else "recorded failure")


@HYPOTHESIS
@given(meta=metas, email=emails)
@example(
    meta={"full_name": "'; drop table public.profiles; --", "user_name": "$pg$"},
    email="'; drop table public.profiles; --@x",
)
@example(meta={"user_name": "x" * 100_000, "full_name": "y" * 100_000}, email=None)
@example(meta={"user_name": _random_text(1), "avatar_url": _random_text(2)}, email=None)
@example(meta=["full_name", "Ada"], email="ada@example.com")
@example(meta="just a string", email=None)
@example(meta=42, email=None)
@example(meta=None, email=None)
@example(meta={"custom_claims": "not an object", "name": {"nested": [1, 2]}}, email="@")
@example(meta={"user_name": "\u202eadmin", "full_name": "👩‍👩‍👧‍👦"}, email="ab@x")
def test_hostile_signup_commits_and_is_served(
    installed: TestDB, meta: Any, email: str | None
) -> None:
    reset(installed)
    (uid,) = signup_raw(installed, [(meta, email)])
    assert_served(installed, uid)
    assert_intact(installed)


@BATCH
@given(
    batch=st.lists(st.tuples(metas, emails), min_size=1, max_size=5).filter(
        # auth.users.email is unique: one statement cannot sign two users up with one email.
        lambda b: len({e for _, e in b if e is not None}) == sum(e is not None for _, e in b)
    )
)
def test_hostile_batch_signup_in_one_statement(
    installed: TestDB, batch: list[tuple[Any, str | None]]
) -> None:
    reset(installed)
    ids = signup_raw(installed, batch)
    for uid in ids:
        assert_served(installed, uid)
    assert_intact(installed)


def test_sql_null_metadata(installed: TestDB) -> None:
    ids = signup_raw(installed, [(None, None), (None, "nul@example.com")], sql_null=True)
    for uid in ids:
        assert_served(installed, uid)
    # Nothing is made from the email address.
    assert installed.scalar("select username from public.profiles where id = %s", (ids[1],)) is None
    assert_intact(installed)


def test_hostile_values_are_stored_verbatim_not_executed(installed: TestDB) -> None:
    meta = {
        "full_name": "'; drop table public.profiles; --",
        "user_name": "$pg$ x $pg$",
        "avatar_url": "\u202eevil\u202c",
    }
    (uid,) = signup_raw(installed, [(meta, None)])
    with installed.connect() as conn:
        row = conn.execute(
            "select full_name, username, avatar_url from public.profiles where id = %s", (uid,)
        ).fetchone()
    assert row == (meta["full_name"], meta["user_name"], meta["avatar_url"])
    assert_intact(installed)


@BATCH
@given(meta=metas, email=emails)
@example(meta={"user_name": _random_text(3)}, email=None)
def test_ensure_of_a_hostile_user_returns_a_profile_or_a_creation_error(
    installed: TestDB, meta: Any, email: str | None
) -> None:
    reset(installed)
    set_enabled(installed.settings, False)
    try:
        (uid,) = signup_raw(installed, [(meta, email)])
    finally:
        set_enabled(installed.settings, True)
    with ProfileGuard(installed.settings, max_size=1) as client:
        try:
            profile = client.ensure(uid)
        except ProfileCreationError as err:
            assert err.sqlstate and not err.sqlstate.startswith(("08", "57", "40"))
            _, has_profile, failures = outcome(installed, uid)
            assert (has_profile, failures) == (False, 1)
        else:
            assert profile["id"] == str(uid)
            assert outcome(installed, uid) == (True, True, 0)
    assert_intact(installed)


def test_huge_incompressible_username_is_recorded_not_raised(installed: TestDB) -> None:
    """A 100k-character random user_name cannot fit a btree entry: the signup still commits."""
    (uid,) = signup_raw(installed, [({"user_name": _random_text(7)}, "big@example.com")])
    assert_served(installed, uid)
    with psycopg.connect(installed.url) as conn:
        users = conn.execute("select count(*) from auth.users").fetchone()
    assert users == (1,)

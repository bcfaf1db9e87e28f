"""Property: under the default mapping nothing private becomes public, and no sign-up fails.

Each Hypothesis example is a batch of sign-ups shaped as Supabase Auth stores them: Google,
GitHub and Discord metadata (handles and names from test_username_properties' strategies, the
email copied into the metadata as those providers do), email/magic link/OTP with `{}` or GoTrue's
own keys, phone sign-ups, anonymous users, and free-form documents. Every batch goes into each
table shape (the username nullable, NOT NULL or absent; unique or not), each in its own database
with profileguard installed, most of it in one statement and some as single sign-ups.

After each batch, for every shape: every sign-up committed and has a profile, no failure was
recorded, no profile column holds the email's local part or the phone number, and a sign-up
without a provider's handle has no username, or `user_` + the hash of its id where the column is
NOT NULL. Every email's local part and phone number is unique to its sign-up (a counter in it),
so a match can only come from copying it.

BATCHES x BATCH_SIZE documents per shape (the default: 20 x 100 = 2,000).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
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
from psycopg.rows import dict_row
from test_username_properties import documents, names, values

from profileguard.config import load_settings
from profileguard.install import install

BATCHES = int(os.environ.get("PROFILEGUARD_PROPERTY_BATCHES", "20"))
BATCH_SIZE = 100
SINGLE = 10  # of each batch, signed up one statement each; the rest in one statement

PROFILE = (
    "create table public.profiles (id uuid primary key references auth.users on delete cascade"
)
SHAPES = {
    "nullable_unique": f"{PROFILE}, username text unique"
    " constraint username_length check (char_length(username) >= 3),"
    " full_name text, avatar_url text, website text)",
    "nullable": f"{PROFILE}, username text, full_name text, avatar_url text)",
    "not_null_unique": f"{PROFILE}, username text not null unique, full_name text,"
    " avatar_url text)",
    "not_null": f"{PROFILE}, username text not null, full_name text, avatar_url text)",
    "absent": f"{PROFILE}, full_name text, avatar_url text, updated_at timestamptz)",
}
# Local parts people have; each sign-up's address gets a counter as well.
LOCAL_PARTS = ["ada", "ada.lovelace", "torvalds", "john.doe", "x", "grace+test", "émile"]
PICTURE = "https://lh3.googleusercontent.com/a/p"

_counter = itertools.count()


@dataclass(frozen=True)
class Signup:
    """One generated sign-up, before its address and phone are made unique."""

    provider: str | None
    local: str | None  # the email's local part (no address when None)
    phone: bool
    metadata: dict[str, Any]
    handle: bool  # the metadata carries a username source (user_name / preferred_username)


def _signup(provider: str | None, local: str | None, phone: bool, meta: dict[str, Any]) -> Signup:
    handle = any(meta.get(k) is not None for k in ("user_name", "preferred_username"))
    return Signup(provider, local, phone, meta, handle)


locals_ = st.sampled_from(LOCAL_PARTS)
google = st.builds(
    lambda local, name, picture: _signup(
        "google",
        local,
        False,
        {
            "iss": "https://accounts.google.com",
            "sub": "109876543210987654321",
            "name": name,
            "full_name": name,
            "email": "{email}",
            "email_verified": True,
            **({"picture": PICTURE, "avatar_url": PICTURE} if picture else {}),
        },
    ),
    locals_,
    names,
    st.booleans(),
)
github = st.builds(
    lambda local, login, name, extra: _signup(
        "github",
        local,
        False,
        {
            "user_name": login,
            "preferred_username": login,
            "full_name": name,
            "avatar_url": "https://avatars.githubusercontent.com/u/1",
            "email": "{email}",
            **extra,
        },
    ),
    st.one_of(st.none(), locals_),
    names,
    values,
    st.fixed_dictionaries({}, optional={"name": names}),
)
discord = st.builds(
    lambda local, handle, name: _signup(
        "discord",
        local,
        False,
        {
            "full_name": handle,
            "name": f"{handle}#0",
            "custom_claims": {"global_name": name},
            "avatar_url": "https://cdn.discordapp.com/avatars/1/x.png",
            "email": "{email}",
        },
    ),
    locals_,
    names,
    values,
)
# Email, magic link and OTP: `{}`, or the keys GoTrue itself writes (the address among them).
email_otp = st.builds(
    lambda local, gotrue: _signup(
        "email",
        local,
        False,
        {"sub": "{id}", "email": "{email}", "email_verified": False, "phone_verified": False}
        if gotrue
        else {},
    ),
    locals_,
    st.booleans(),
)
phone = st.builds(
    lambda gotrue, also_email: _signup(
        "phone",
        "ada" if also_email else None,
        True,
        {"sub": "{id}", "phone": "{phone}", "phone_verified": False} if gotrue else {},
    ),
    st.booleans(),
    st.booleans(),
)
anonymous = st.just(_signup("anonymous", None, False, {}))
# What an app may pass in signUp(options.data), through any sign-up method.
free_form = st.builds(
    lambda meta, provider, local: _signup(provider, local, False, meta),
    documents,
    st.sampled_from(["email", "github", "google", None]),
    st.one_of(st.none(), locals_),
)
signups = st.one_of(google, github, discord, email_otp, phone, anonymous, free_form)
batches = st.lists(signups, min_size=BATCH_SIZE, max_size=BATCH_SIZE)


@dataclass
class Table:
    """One table shape in its own database, with profileguard installed by default."""

    name: str
    dbname: str
    url: str

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)


@pytest.fixture(scope="module")
def tables(server_dsn: str, template_db: str) -> Iterator[dict[str, Table]]:
    made: dict[str, Table] = {}
    try:
        for name, ddl in SHAPES.items():
            dbname = f"pg_private_{os.getpid()}_{name}"
            url = shape_db(server_dsn, template_db, dbname, ddl)
            install(load_settings(env={}, database_url=url))
            made[name] = Table(name, dbname, url)
        yield made
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            for table in made.values():
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(
                        sql.Identifier(table.dbname)
                    )
                )


@dataclass(frozen=True)
class Row:
    """One sign-up as inserted, with what must never be copied out of it."""

    id: uuid.UUID
    email: str | None
    phone: str | None
    metadata: str
    app: str
    anonymous: bool
    signup: Signup

    @property
    def private(self) -> list[str]:
        """The email's local part and the phone number (with and without its '+')."""
        found = []
        if self.email is not None:
            found.append(self.email.split("@")[0])
        if self.phone is not None:
            found += [self.phone, self.phone.lstrip("+")]
        return found


def _rows(batch: list[Signup]) -> list[Row]:
    rows = []
    for signup in batch:
        n = next(_counter)
        uid = uuid.uuid4()
        email = f"{signup.local}.{n:07d}q@d{n}.example.com" if signup.local else None
        phone = f"+1555{n:07d}" if signup.phone else None
        text = json.dumps(signup.metadata)
        text = text.replace('"{email}"', json.dumps(email)).replace('"{id}"', json.dumps(str(uid)))
        text = text.replace('"{phone}"', json.dumps(phone))
        app = json.dumps({"provider": signup.provider} if signup.provider else {})
        rows.append(Row(uid, email, phone, text, app, signup.provider == "anonymous", signup))
    return rows


def _insert(conn: psycopg.Connection, rows: list[Row]) -> None:
    conn.execute(
        "insert into auth.users (id, aud, role, email, phone, raw_user_meta_data,"
        " raw_app_meta_data, is_anonymous, created_at)"
        " select r.id, 'authenticated', '', r.email, r.phone, r.meta::jsonb, r.app::jsonb,"
        " r.anon, now()"
        " from unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bool[])"
        " as r(id, email, phone, meta, app, anon)",
        (
            [r.id for r in rows],
            [r.email for r in rows],
            [r.phone for r in rows],
            [r.metadata for r in rows],
            [r.app for r in rows],
            [r.anonymous for r in rows],
        ),
    )


def _neutral(uid: uuid.UUID) -> re.Pattern[str]:
    """`user_` + 8 (or, after a collision, 16) hex digits of the md5 of the user's id."""
    digest = hashlib.md5(str(uid).encode()).hexdigest()
    return re.compile(f"user_({digest[:8]}|{digest[:16]})")


def _check(table: Table, rows: list[Row]) -> None:
    ids = [r.id for r in rows]
    with table.connect() as conn:
        committed, failures = conn.execute(
            "select (select count(*) from auth.users where id = any(%s)),"
            " (select count(*) from profileguard.events where kind = 'failure')",
            (ids,),
        ).fetchone() or (0, 0)
        with conn.cursor(row_factory=dict_row) as cur:
            profiles = {
                p["id"]: p
                for p in cur.execute("select * from public.profiles where id = any(%s)", (ids,))
            }
    assert (committed, failures) == (len(rows), 0), f"{table.name}: {committed}, {failures}"
    assert len(profiles) == len(rows), f"{table.name}: {len(rows) - len(profiles)} missing"
    for row in rows:
        profile = profiles[row.id]
        for column, value in profile.items():
            if not isinstance(value, str):
                continue
            for private in row.private:
                assert private.casefold() not in value.casefold(), (table.name, column, row)
        if row.signup.handle or "username" not in profile:
            continue
        username = profile["username"]
        if table.name.startswith("not_null"):
            assert _neutral(row.id).fullmatch(username), (table.name, username, row)
        else:
            assert username is None, (table.name, username, row)


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
def test_no_signup_fails_and_nothing_private_is_copied(
    tables: dict[str, Table], batch: list[Signup]
) -> None:
    for table in tables.values():
        rows = _rows(batch)
        with table.connect() as conn:
            _insert(conn, rows[SINGLE:])
            for row in rows[:SINGLE]:
                _insert(conn, [row])
        _check(table, rows)


def test_the_property_covered_enough_documents(tables: dict[str, Table]) -> None:
    """Runs after the property test (file order): at least 2,000 sign-ups per table shape,
    email-only ones among them, each with its profile."""
    for table in tables.values():
        with table.connect() as conn:
            row = conn.execute(
                "select count(*), count(*) filter (where raw_user_meta_data = '{}'"
                "   and email is not null),"
                " (select count(*) from public.profiles) from auth.users"
            ).fetchone()
        assert row is not None and row[0] == row[2] >= BATCHES * BATCH_SIZE, (table.name, row)
        assert row[1] > 0, table.name

"""Metadata shapes of real providers, through every path, with the default mapping.

Each shape (keys as Supabase Auth stores them in raw_user_meta_data) goes through the trigger
(a Supabase-style sign-up), register(), a first OAuth login, ensure_profile on a user the trigger
missed, and the client's fallback insert; every path must yield exactly the same profile columns.
Usernames are unique and at least 3 characters in the created table, so short or taken names get
'_' + the first 8 hex digits of the md5 of the user's id; so do names the provider does not vouch
for (metadata of email sign-ups): username.unverified = "suffix". A sign-up without a provider's
handle gets no username: nothing is made from an email address unless configured.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import TestDB, key_hash

from profileguard.client import ProfileGuard, RegisteredUser, SupabaseAuthBackend
from profileguard.config import load_settings
from profileguard.install import install, set_enabled

Expected = str | None | Callable[[uuid.UUID], str]


def suffixed(base: str) -> Callable[[uuid.UUID], str]:
    """The username a short or taken `base` becomes for a given user."""
    return lambda uid: f"{base}_{key_hash(uid)}"


LONG_NAME = ("Hubert Blaine Wolfeschlegelsteinhausenbergerdorff " * 40).strip()  # ~2,000 chars
LONG_HANDLE = "a" * 300


@dataclass(frozen=True)
class Shape:
    """One provider's sign-up: what Supabase Auth stores, and the profile it must give."""

    name: str
    provider: str  # "email" for email/magic link/OTP, "anonymous", or the OAuth provider
    email: str | None
    metadata: dict[str, Any]
    full_name: str | None
    avatar_url: str | None
    username: Expected
    sub: str = field(default_factory=lambda: str(uuid.uuid4().int)[:18])

    def expected(self, uid: uuid.UUID) -> dict[str, Any]:
        username = self.username(uid) if callable(self.username) else self.username
        return {"full_name": self.full_name, "avatar_url": self.avatar_url, "username": username}


GOOGLE_PIC = "https://lh3.googleusercontent.com/a/ACg8ocK-ada=s96-c"
DISCORD_PIC = "https://cdn.discordapp.com/avatars/389980445330374656/36ba21ec.png"
GITHUB_PIC = "https://avatars.githubusercontent.com/u/583231?v=4"

SHAPES = [
    Shape(
        "google",
        "google",
        "ada.lovelace@gmail.com",
        {
            "iss": "https://accounts.google.com",
            "sub": "109876543210987654321",
            "name": "Ada Lovelace",
            "full_name": "Ada Lovelace",
            "email": "ada.lovelace@gmail.com",
            "email_verified": True,
            "phone_verified": False,
            "picture": GOOGLE_PIC,
            "avatar_url": GOOGLE_PIC,
            "provider_id": "109876543210987654321",
        },
        "Ada Lovelace",
        GOOGLE_PIC,
        None,  # no handle: nothing is made from the email
    ),
    Shape(
        "google_name_and_picture_only",
        "google",
        "grace@gmail.com",
        {
            "name": "Grace Hopper",
            "picture": "https://lh3.googleusercontent.com/g",
            "email": "grace@gmail.com",
        },
        "Grace Hopper",
        "https://lh3.googleusercontent.com/g",
        None,  # no handle: nothing is made from the email
    ),
    Shape(
        "github",
        "github",
        "octocat@github.com",
        {
            "iss": "https://api.github.com",
            "sub": "583231",
            "name": "The Octocat",
            "full_name": "The Octocat",
            "user_name": "octocat",
            "preferred_username": "octocat",
            "avatar_url": GITHUB_PIC,
            "email": "octocat@github.com",
            "email_verified": True,
            "provider_id": "583231",
        },
        "The Octocat",
        GITHUB_PIC,
        "octocat",
    ),
    Shape(
        "github_without_display_name",
        "github",
        "ghost@example.com",
        {
            "user_name": "ghost-user",
            "preferred_username": "ghost-user",
            "full_name": "",
            "avatar_url": GITHUB_PIC,
        },
        None,
        GITHUB_PIC,
        "ghost-user",
    ),
    Shape(
        "github_preferred_username_only",
        "github",
        None,
        {"preferred_username": "linus", "avatar_url": GITHUB_PIC},
        None,
        GITHUB_PIC,
        "linus",
    ),
    Shape(
        "github_one_letter_login",
        "github",
        "x@example.com",
        {"user_name": "x", "preferred_username": "x", "avatar_url": GITHUB_PIC},
        None,
        GITHUB_PIC,
        suffixed("x"),
    ),
    Shape(
        "discord",
        "discord",
        "darcy@example.com",
        {
            "iss": "https://discord.com/api",
            "sub": "389980445330374656",
            "name": "codejedi#0",
            "full_name": "codejedi",
            "custom_claims": {"global_name": "CodeJedi"},
            "avatar_url": DISCORD_PIC,
            "picture": DISCORD_PIC,
            "email": "darcy@example.com",
            "email_verified": True,
            "phone_verified": False,
            "provider_id": "389980445330374656",
        },
        "CodeJedi",
        DISCORD_PIC,
        None,  # no handle: nothing is made from the email
    ),
    Shape(
        "discord_without_global_name",
        "discord",
        "plain@example.com",
        {
            "name": "plainuser#0",
            "full_name": "plainuser",
            "custom_claims": {"global_name": ""},
            "avatar_url": DISCORD_PIC,
        },
        "plainuser",
        DISCORD_PIC,
        None,  # no handle: nothing is made from the email
    ),
    Shape(
        "magic_link",
        "email",
        "dora.explorer@example.com",
        {},
        None,
        None,
        None,  # no handle: nothing is made from the email
    ),
    Shape("otp_short_email", "email", "al@example.com", {}, None, None, None),
    Shape("anonymous", "anonymous", None, {}, None, None, None),
    Shape(
        "emoji",
        "github",
        "unicorn@example.com",
        {
            "full_name": "🦄 Ünïcødé Ünicorn 👩‍💻",
            "user_name": "unicorn_🦄",
            "avatar_url": GITHUB_PIC,
        },
        "🦄 Ünïcødé Ünicorn 👩‍💻",
        GITHUB_PIC,
        "unicorn_🦄",
    ),
    Shape(
        "emoji_only_short_handle",
        "github",
        "e@example.com",
        {"full_name": "👩‍👩‍👧‍👦", "user_name": "🦄"},
        "👩‍👩‍👧‍👦",
        None,
        suffixed("🦄"),
    ),
    Shape(
        "rtl",
        "google",
        "mohammed@example.com",
        {"full_name": "محمد الأحمد", "name": "محمد الأحمد", "picture": GOOGLE_PIC},
        "محمد الأحمد",
        GOOGLE_PIC,
        None,  # no handle: nothing is made from the email
    ),
    Shape(
        "rtl_handle",
        "github",
        "noa@example.com",
        {"full_name": "נועה כהן", "user_name": "נועה"},
        "נועה כהן",
        None,
        "נועה",
    ),
    Shape(
        "very_long_names",
        "github",
        "long@example.com",
        {"full_name": LONG_NAME, "user_name": LONG_HANDLE},
        LONG_NAME,
        None,
        LONG_HANDLE[:64],  # username.max_length
    ),
    Shape(
        "padded_names_are_trimmed",
        "google",
        "pad@example.com",
        {"full_name": "   ", "name": "  Padded Name  ", "picture": "  "},
        "Padded Name",
        None,
        None,  # no handle: nothing is made from the email
    ),
]


def supabase_signup(db: TestDB, shape: Shape) -> uuid.UUID:
    """The rows Supabase Auth writes for this sign-up: user with role '', UPDATE, identity."""
    uid = uuid.uuid4()
    app_meta = {"provider": shape.provider, "providers": [shape.provider]}
    with db.connect(autocommit=False) as conn:
        conn.execute(
            "insert into auth.users (instance_id, id, aud, role, email, encrypted_password,"
            " raw_app_meta_data, raw_user_meta_data, is_anonymous, created_at, updated_at,"
            " confirmation_token, recovery_token, email_change_token_new, email_change)"
            " values ('00000000-0000-0000-0000-000000000000', %s, 'authenticated', '', %s, '',"
            " %s, %s, %s, now(), now(), '', '', '', '')",
            (
                uid,
                shape.email,
                json.dumps(app_meta),
                json.dumps(shape.metadata),
                shape.provider == "anonymous",
            ),
        )
        conn.execute("update auth.users set role = 'authenticated' where id = %s", (uid,))
        if shape.provider != "anonymous":
            conn.execute(
                "insert into auth.identities (provider_id, user_id, identity_data, provider)"
                " values (%s, %s, %s, %s)",
                (
                    shape.sub if shape.provider != "email" else str(uid),
                    uid,
                    json.dumps({**shape.metadata, "sub": shape.sub}),
                    shape.provider,
                ),
            )
        conn.commit()
    return uid


def register(guard: ProfileGuard, shape: Shape) -> RegisteredUser:
    if shape.provider == "anonymous":
        return guard.register(anonymous=True, metadata=shape.metadata)
    if shape.provider == "email":
        return guard.register(email=shape.email, metadata=shape.metadata)
    return guard.register(
        provider=shape.provider, provider_id=shape.sub, email=shape.email, metadata=shape.metadata
    )


def profile_columns(db: TestDB, uid: uuid.UUID | str) -> dict[str, Any] | None:
    with db.connect() as conn:
        row = conn.execute(
            "select full_name, avatar_url, username from public.profiles where id = %s",
            (str(uid),),
        ).fetchone()
    return (
        None
        if row is None
        else dict(zip(("full_name", "avatar_url", "username"), row, strict=True))
    )


def picked(profile: dict[str, Any]) -> dict[str, Any]:
    return {k: profile[k] for k in ("full_name", "avatar_url", "username")}


@pytest.fixture
def guard(installed: TestDB) -> Iterator[ProfileGuard]:
    with ProfileGuard(installed.settings, identity=SupabaseAuthBackend(bcrypt_rounds=4)) as g:
        yield g


def reset(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute("delete from auth.users")  # profiles and identities go with them


def without_trigger(db: TestDB, shape: Shape) -> uuid.UUID:
    set_enabled(db.settings, False)
    try:
        uid = supabase_signup(db, shape)
    finally:
        set_enabled(db.settings, True)
    assert profile_columns(db, uid) is None
    return uid


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_shape_gives_the_same_profile_on_every_path(
    installed: TestDB, guard: ProfileGuard, shape: Shape
) -> None:
    # 1. The trigger, on a sign-up written as Supabase Auth writes it.
    uid = supabase_signup(installed, shape)
    assert profile_columns(installed, uid) == shape.expected(uid), "trigger"
    reset(installed)

    # 2. register(): the returned profile is the stored one.
    result = register(guard, shape)
    uid = uuid.UUID(result.id)
    assert picked(result.profile) == shape.expected(uid), "register"
    assert profile_columns(installed, uid) == shape.expected(uid), "register (stored)"
    assert result.user["is_anonymous"] is (shape.provider == "anonymous")
    reset(installed)

    # 3. A first OAuth login from the provider's claims.
    if shape.provider not in ("email", "anonymous"):
        claims = {**shape.metadata, "sub": shape.sub}
        if shape.email:
            claims["email"] = shape.email
        login = guard.ensure_on_login(claims, provider=shape.provider)
        uid = uuid.UUID(login.id)
        assert login.created is True
        assert picked(login.profile) == shape.expected(uid), "first login"
        again = guard.ensure_on_login(claims, provider=shape.provider)
        assert (again.id, again.created, again.profile) == (login.id, False, login.profile)
        reset(installed)

    # 4. ensure_profile for a user the trigger missed (login by id).
    uid = without_trigger(installed, shape)
    late = guard.ensure_on_login(uid)
    assert late.path == "function"
    assert picked(late.profile) == shape.expected(uid), "ensure_profile"
    reset(installed)

    # 5. The client's fallback insert (profileguard disabled on the client).
    uid = without_trigger(installed, shape)
    settings = installed.settings.with_overrides(enabled=False)
    with ProfileGuard(settings) as direct:
        fallback = direct.ensure_result(uid)
    assert fallback.path == "fallback"
    assert picked(fallback.profile) == shape.expected(uid), "fallback"
    assert installed.scalar("select count(*) from profileguard.failures") == 0


def test_usernames_collide_across_providers(installed: TestDB, guard: ProfileGuard) -> None:
    """One handle claimed by a GitHub login, a GitLab login and an email sign-up that chose it:
    the first keeps it, the others get the suffix, on the trigger and on register alike. Email
    sign-ups without a chosen name get none, whatever their address."""
    github = guard.register(
        provider="github", provider_id="1", email="gh@example.com", metadata={"user_name": "ada"}
    )
    gitlab = guard.register(
        provider="gitlab",
        provider_id="2",
        email="ada@gitlab.example",
        metadata={"preferred_username": "ada"},
    )
    chosen = supabase_signup(
        installed,
        Shape("magic", "email", "someone@example.org", {"user_name": "ada"}, None, None, None),
    )
    assert github.profile["username"] == "ada"
    assert gitlab.profile["username"] == suffixed("ada")(uuid.UUID(gitlab.id))
    assert profile_columns(installed, chosen) == {
        "full_name": None,
        "avatar_url": None,
        "username": suffixed("ada")(chosen),
    }
    # Email addresses give no names: several sign-ups with the same local part all get NULL.
    plain = [guard.register(email=f"ada@{d}.com") for d in ("a", "b", "c")]
    assert [p.profile["username"] for p in plain] == [None, None, None]
    # A short handle is suffixed even when free; suffixed names never collide with each other.
    short = [
        guard.register(provider="github", provider_id=f"jo{i}", metadata={"user_name": "jo"})
        for i in range(3)
    ]
    names = [s.profile["username"] for s in short]
    assert names == [suffixed("jo")(uuid.UUID(s.id)) for s in short]
    assert len(set(names)) == 3
    assert installed.scalar("select count(*) from public.profiles") == 9
    assert (
        installed.scalar("select count(*) from public.profiles where char_length(username) < 3")
        == 0
    )
    assert installed.scalar("select count(*) from profileguard.failures") == 0


def test_every_shape_in_one_bulk_statement(installed: TestDB) -> None:
    """All shapes inserted by one statement: the set-based trigger gives each its profile."""
    ids = [uuid.uuid4() for _ in SHAPES]
    with installed.connect() as conn:
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, is_anonymous,"
            " raw_app_meta_data, created_at) select r.id, 'authenticated', 'authenticated',"
            " r.email, r.meta::jsonb, r.anon, jsonb_build_object('provider', r.provider), now()"
            " from unnest(%s::uuid[], %s::text[], %s::text[], %s::bool[], %s::text[])"
            " as r(id, email, meta, anon, provider)",
            (
                ids,
                [s.email for s in SHAPES],
                [json.dumps(s.metadata) for s in SHAPES],
                [s.provider == "anonymous" for s in SHAPES],
                [s.provider for s in SHAPES],
            ),
        )
    for shape, uid in zip(SHAPES, ids, strict=True):
        assert profile_columns(installed, uid) == shape.expected(uid), shape.name


README = Path(__file__).resolve().parent.parent / "README.md"
# The README's opt-in to names made from email addresses, as written there.
README_EMAIL_USERNAMES = re.search(
    r"<!-- email-usernames -->\n```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S
)[1]  # type: ignore[index]


def _reinstall(db: TestDB, toml: str, tmp_path: Path) -> None:
    config = tmp_path / "profileguard.toml"
    config.write_text(toml, encoding="utf-8")
    db.settings = load_settings(config, env={}, database_url=db.url)
    install(db.settings)


NONE = (None, None, None)  # a Shape's expected profile, unused here


def test_email_derived_usernames_are_an_opt_in(installed: TestDB, tmp_path: Path) -> None:
    """The default gives an email-only sign-up no username; the mapping the README documents
    restores names made from the email's local part (suffixed: the user typed the address)."""
    before = supabase_signup(
        installed, Shape("otp", "email", "ada.lovelace@example.com", {}, *NONE)
    )
    assert profile_columns(installed, before) == {
        "full_name": None,
        "avatar_url": None,
        "username": None,
    }
    _reinstall(installed, README_EMAIL_USERNAMES, tmp_path)
    after = supabase_signup(installed, Shape("otp", "email", "ada.lovelace@example.net", {}, *NONE))
    assert profile_columns(installed, after) == {
        "full_name": None,
        "avatar_url": None,
        "username": suffixed("ada.lovelace")(after),
    }


def test_supabase_preset_copies_what_handle_new_user_copies(
    installed: TestDB, tmp_path: Path
) -> None:
    """[profile] preset = "supabase": full_name and avatar_url from the metadata as Supabase's
    documented trigger copies them, no username rule (a GitHub handle is not copied either)."""
    _reinstall(installed, '[profile]\npreset = "supabase"\n', tmp_path)
    expected = {
        "github": ("The Octocat", GITHUB_PIC),
        "google_name_and_picture_only": (None, None),  # name and picture are not copied
        "discord": ("codejedi", DISCORD_PIC),
        "magic_link": (None, None),
    }
    by_name = {s.name: s for s in SHAPES}
    for name, (full_name, avatar_url) in expected.items():
        uid = supabase_signup(installed, by_name[name])
        assert profile_columns(installed, uid) == {
            "full_name": full_name,
            "avatar_url": avatar_url,
            "username": None,
        }, name
    assert installed.scalar("select count(*) from profileguard.failures") == 0

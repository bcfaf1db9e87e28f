"""register() and ensure_on_login(), sync and async, on the Supabase-shaped auth.users.

Every registration runs against the real server: the trigger, ensure_profile and the fallback
are the real ones; faults are real (CHECK constraints, strict mode, a lock held by another
session, concurrent sign-ups in threads).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import bcrypt
import pytest
from conftest import SUPABASE_POSTGRES, TestDB, key_hash
from psycopg import sql
from psycopg_pool import ConnectionPool

from profileguard.client import (
    AsyncProfileGuard,
    AsyncSupabaseAuthBackend,
    PasswordPolicy,
    ProfileGuard,
    SupabaseAuthBackend,
)
from profileguard.config import load_settings
from profileguard.errors import (
    ConfigError,
    DatabaseError,
    ExitCode,
    InvalidRegistrationError,
    InvalidUserIdError,
    ProfileCreationError,
    ProfileGuardError,
    ProfilePendingError,
    UserExistsError,
    UserNotFoundError,
    WeakPasswordError,
)
from profileguard.install import install, set_enabled, uninstall

PASSWORD = "correct horse battery staple"
ADA = {"full_name": "Ada Lovelace", "user_name": "ada", "avatar_url": "https://x/ada.png"}


@pytest.fixture
def guard(installed: TestDB) -> Iterator[ProfileGuard]:
    with ProfileGuard(installed.settings, identity=SupabaseAuthBackend(bcrypt_rounds=4)) as g:
        yield g


def row(db: TestDB, query: str, params: Any = None) -> dict[str, Any] | None:
    with db.connect() as conn:
        cur = conn.execute(query, params)
        found = cur.fetchone()
        if found is None:
            return None
        return dict(zip([c.name for c in cur.description or []], found, strict=True))


def auth_user(db: TestDB, uid: object) -> dict[str, Any] | None:
    return row(db, "select * from auth.users where id = %s", (str(uid),))


def failures_of(db: TestDB, uid: object) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return conn.execute(
            "select source, sqlstate from profileguard.events where kind = 'failure'"
            " and user_id = %s order by id",
            (str(uid),),
        ).fetchall()


def count(db: TestDB, table: str) -> int:
    return int(db.scalar(f"select count(*) from {table}"))


def reject_name(db: TestDB, name: str) -> None:
    with db.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint reject_name"
            f" check (full_name is distinct from '{name}') not valid"
        )


# --- email sign-up ------------------------------------------------------------------------------


def test_register_returns_the_user_with_its_profile(guard: ProfileGuard, installed: TestDB) -> None:
    result = guard.register(email="  Ada@Example.COM ", password=PASSWORD, metadata=ADA)
    assert result.created is True
    assert result.profile_created is True
    assert result.path == "trigger"  # the insert fired the trigger; ensure read its profile
    assert result.user["email"] == "ada@example.com"
    assert result.user["role"] == "authenticated"
    assert result.profile["id"] == result.user["id"]
    assert result.profile["full_name"] == "Ada Lovelace"
    assert result.profile["username"] == f"ada_{key_hash(result.id)}"  # unverified
    assert result.profile["avatar_url"] == "https://x/ada.png"
    assert "encrypted_password" not in result.user
    # Committed before returning: another connection sees the user and the same profile.
    stored = row(
        installed, "select to_jsonb(p) as p from public.profiles p where id = %s", (result.id,)
    )
    assert stored is not None
    assert {k: stored["p"][k] for k in ("id", "full_name", "username", "avatar_url")} == {
        k: str(result.profile[k]) if k == "id" else result.profile[k]
        for k in ("id", "full_name", "username", "avatar_url")
    }
    assert failures_of(installed, result.id) == []


def test_register_writes_auth_users_as_supabase_auth_does(
    guard: ProfileGuard, installed: TestDB
) -> None:
    result = guard.register(email="grace@example.com", password=PASSWORD, metadata={"a": 1})
    user = auth_user(installed, result.id)
    assert user is not None
    assert user["aud"] == "authenticated"
    assert user["role"] == "authenticated"
    assert str(user["instance_id"]) == "00000000-0000-0000-0000-000000000000"
    assert user["raw_app_meta_data"] == {"provider": "email", "providers": ["email"]}
    assert user["raw_user_meta_data"] == {"a": 1}
    # NULL tokens make Supabase Auth fail to read the user; they must be ''.
    for column in (
        "confirmation_token",
        "recovery_token",
        "email_change_token_new",
        "email_change",
    ):
        assert user[column] == "", column
    assert user["email_confirmed_at"] is None
    assert user["is_anonymous"] is False and user["is_sso_user"] is False
    assert user["created_at"] is not None and user["updated_at"] is not None
    assert user["encrypted_password"].startswith("$2a$04$")
    assert bcrypt.checkpw(PASSWORD.encode(), user["encrypted_password"].encode())
    assert not bcrypt.checkpw(b"wrong password", user["encrypted_password"].encode())
    identity = row(installed, "select * from auth.identities where user_id = %s", (result.id,))
    assert identity is not None
    assert identity["provider"] == "email"
    assert identity["provider_id"] == result.id
    assert identity["email"] == "grace@example.com"
    assert identity["identity_data"]["sub"] == result.id


def test_default_backend_uses_supabase_bcrypt_cost(installed: TestDB) -> None:
    with ProfileGuard(installed.settings) as g:
        result = g.register(email="cost@example.com", password=PASSWORD)
    hashed = installed.scalar(
        "select encrypted_password from auth.users where id = %s", (result.id,)
    )
    assert hashed.startswith("$2a$10$")
    assert bcrypt.checkpw(PASSWORD.encode(), hashed.encode())


def test_password_is_never_logged_or_stored(
    guard: ProfileGuard, installed: TestDB, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Sw0rdfish-unique-8c1f"
    caplog.set_level(logging.DEBUG)
    reject_name(installed, "Pending Person")  # also exercise the failure path's logging
    result = guard.register(email="sec@example.com", password=secret)
    with pytest.raises(ProfilePendingError) as info:
        guard.register(
            email="pending@example.com", password=secret, metadata={"full_name": "Pending Person"}
        )
    with pytest.raises(WeakPasswordError) as weak:
        guard.register(email="weak@example.com", password=secret[:3])
    texts = [r.getMessage() for r in caplog.records] + [
        str(info.value),
        str(weak.value),
        repr(weak.value),
    ]
    assert all(secret not in t and secret[:3] + "'" not in t for t in texts)
    # Nowhere in the database in clear: users, identities, profiles, events.
    for table in ("auth.users", "auth.identities", "public.profiles", "profileguard.events"):
        hits = installed.scalar(
            f"select count(*) from {table} t where strpos(to_jsonb(t)::text, %s) > 0", (secret,)
        )
        assert hits == 0, table
    assert installed.scalar(
        "select encrypted_password from auth.users where id = %s", (result.id,)
    ).startswith("$2a$")


def test_duplicate_email_is_user_exists(guard: ProfileGuard, installed: TestDB) -> None:
    first = guard.register(email="dup@example.com", password=PASSWORD, metadata=ADA)
    with pytest.raises(UserExistsError) as info:
        guard.register(email="DUP@example.com", password="another password")
    assert info.value.conflict == "email"
    assert info.value.exit_code == 9
    assert "dup@example.com" in info.value.message
    assert info.value.hint
    assert count(installed, "auth.users") == 1
    assert count(installed, "public.profiles") == 1
    assert auth_user(installed, first.id) is not None


def test_concurrent_duplicate_sign_ups_create_one_user(installed: TestDB) -> None:
    """Eight threads register the same email at once: one wins, seven get UserExistsError."""
    threads = 8
    barrier = threading.Barrier(threads)
    outcomes: list[object] = []
    lock = threading.Lock()
    backend = SupabaseAuthBackend(bcrypt_rounds=4)
    with ProfileGuard(installed.settings, identity=backend, max_size=threads) as g:
        g._pool.wait()

        def sign_up() -> None:
            barrier.wait()
            try:
                outcome: object = g.register(email="race@example.com", password=PASSWORD)
            except Exception as exc:
                outcome = exc
            with lock:
                outcomes.append(outcome)

        workers = [threading.Thread(target=sign_up) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    losers = [o for o in outcomes if isinstance(o, Exception)]
    assert len(winners) == 1
    assert all(isinstance(o, UserExistsError) and o.conflict == "email" for o in losers), losers
    assert count(installed, "auth.users") == 1
    assert count(installed, "auth.identities") == 1
    assert count(installed, "public.profiles") == 1


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("12345", "length"),
        ("é" * 37, "length"),  # 74 bytes: bcrypt would silently drop the tail
        ("abc\x00defgh", "characters"),
        (12345678, "type"),
    ],
)
def test_weak_passwords_are_refused_before_any_write(
    guard: ProfileGuard, installed: TestDB, password: Any, reason: str
) -> None:
    with pytest.raises(WeakPasswordError) as info:
        guard.register(email="weak@example.com", password=password)
    assert reason in info.value.reasons
    assert info.value.exit_code == 2
    assert info.value.hint
    assert count(installed, "auth.users") == 0


def test_password_policy_with_required_classes(installed: TestDB) -> None:
    policy = PasswordPolicy(min_length=8, required=("lower", "upper", "digit", "symbol"))
    backend = SupabaseAuthBackend(bcrypt_rounds=4, password_policy=policy)
    with ProfileGuard(installed.settings, identity=backend) as g:
        with pytest.raises(WeakPasswordError) as info:
            g.register(email="p@example.com", password="alllowercase")
        assert info.value.reasons == ("characters",)
        assert "upper, digit, symbol" in (info.value.hint or "")
        assert g.register(email="p@example.com", password="Str0ng!pass").created
    with pytest.raises(ConfigError):
        PasswordPolicy(required=("emoji",))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"email": "not-an-email"}, "invalid email"),
        ({"email": "a b@example.com"}, "invalid email"),
        ({"email": "x@" + "d" * 260 + ".com"}, "invalid email"),
        ({"email": None}, "invalid email"),
        ({"email": "m@example.com", "metadata": ["not", "a", "dict"]}, "JSON object"),
        ({"email": "m@example.com", "metadata": {"bad": "nul\x00"}}, "NUL"),
        ({"email": "m@example.com", "metadata": {"n": float("nan")}}, "not JSON"),
        ({"email": "m@example.com", "metadata": {"o": object()}}, "not JSON"),
        ({"email": "m@example.com", "metadata": {"big": "x" * 70_000}}, "bytes"),
        ({"email": "m@example.com", "provider": "Bad Provider"}, "invalid provider"),
        ({"email": "m@example.com", "provider": "github"}, "provider_id"),
        (
            {
                "email": "m@example.com",
                "provider": "github",
                "provider_id": "1",
                "password": PASSWORD,
            },
            "no password",
        ),
        ({"email": "m@example.com", "anonymous": True}, "anonymous"),
        ({"email": "m@example.com", "user_id": "not-a-uuid"}, "not a UUID"),
    ],
)
def test_bad_registration_input_is_a_clear_error(
    guard: ProfileGuard, installed: TestDB, kwargs: dict[str, Any], fragment: str
) -> None:
    kwargs.setdefault("password", None)
    with pytest.raises(InvalidRegistrationError) as info:
        guard.register(**kwargs)
    assert fragment in info.value.message
    assert info.value.hint
    assert info.value.exit_code == 2
    assert count(installed, "auth.users") == 0


# --- other ways users arrive ---------------------------------------------------------------------


def test_passwordless_oauth_and_anonymous_registrations(
    guard: ProfileGuard, installed: TestDB
) -> None:
    magic = guard.register(email="magic@example.com")
    github = guard.register(
        provider="github",
        provider_id="583231",
        email="octo@example.com",
        metadata={"user_name": "octocat", "full_name": "The Octocat", "email_verified": True},
    )
    anon = guard.register(anonymous=True)

    m = auth_user(installed, magic.id)
    assert m is not None and m["encrypted_password"] == ""
    assert magic.profile["username"] is None  # nothing is made from the email address

    g = auth_user(installed, github.id)
    assert g is not None
    assert g["encrypted_password"] == ""
    assert g["raw_app_meta_data"] == {"provider": "github", "providers": ["github"]}
    assert g["email_confirmed_at"] is not None  # the provider verified it
    assert g["last_sign_in_at"] is not None  # registered on its first login
    identity = row(installed, "select * from auth.identities where user_id = %s", (github.id,))
    assert identity is not None
    assert (identity["provider"], identity["provider_id"]) == ("github", "583231")
    assert identity["identity_data"]["sub"] == "583231"
    assert github.profile["username"] == "octocat"
    assert github.profile["full_name"] == "The Octocat"

    a = auth_user(installed, anon.id)
    assert a is not None
    assert a["is_anonymous"] is True and a["email"] is None
    assert a["raw_app_meta_data"]["provider"] == "anonymous"
    assert (
        installed.scalar("select count(*) from auth.identities where user_id = %s", (anon.id,)) == 0
    )
    assert anon.profile["id"] == anon.user["id"]
    assert anon.profile["username"] is None
    assert count(installed, "public.profiles") == 3


def test_register_as_supabase_auth_admin(installed: TestDB) -> None:
    """As Supabase Auth does: role supabase_auth_admin, search_path auth. The trigger (SECURITY
    DEFINER, empty search_path) still creates the profile, and ensure runs as the caller."""
    with installed.connect() as conn:  # remember who inserted each user, and with which path
        conn.execute("create table public.inserted_by (who text, path text)")
        conn.execute("grant insert on public.inserted_by to supabase_auth_admin")
        conn.execute(
            "create function public.note_inserter() returns trigger language plpgsql as $$"
            " begin insert into public.inserted_by values (current_user,"
            " current_setting('search_path')); return new; end $$"
        )
        conn.execute(
            "create trigger note_inserter before insert on auth.users"
            " for each row execute function public.note_inserter()"
        )
    backend = SupabaseAuthBackend(bcrypt_rounds=4, as_role="supabase_auth_admin")
    with ProfileGuard(installed.settings, identity=backend) as g:
        result = g.register(email="gotrue@example.com", password=PASSWORD, metadata=ADA)
        with g._pool.connection() as conn:
            role = conn.execute("select current_user = session_user").fetchone()
    assert result.path == "trigger"
    assert result.profile["full_name"] == "Ada Lovelace"
    with installed.connect() as conn:
        assert conn.execute("select who, path from public.inserted_by").fetchall() == [
            ("supabase_auth_admin", "auth")
        ]
    assert role == (True,)  # the role does not leak into the pooled connection
    assert failures_of(installed, result.id) == []


def test_register_without_the_trigger_uses_ensure_profile(
    guard: ProfileGuard, installed: TestDB
) -> None:
    set_enabled(installed.settings, False)
    result = guard.register(email="late@example.com", password=PASSWORD, metadata=ADA)
    assert result.path == "function"
    assert result.profile_created is True
    assert result.profile["username"] == f"ada_{key_hash(result.id)}"  # unverified


def test_register_when_not_installed_uses_the_fallback(installed: TestDB) -> None:
    uninstall(installed.settings)
    with ProfileGuard(installed.settings, identity=SupabaseAuthBackend(bcrypt_rounds=4)) as g:
        result = g.register(email="plain@example.com", password=PASSWORD, metadata=ADA)
    assert result.path == "fallback"
    assert result.profile["full_name"] == "Ada Lovelace"
    assert count(installed, "public.profiles") == 1


def test_profile_failure_commits_the_user_and_records_once(
    guard: ProfileGuard, installed: TestDB
) -> None:
    reject_name(installed, "Rejected")
    with pytest.raises(ProfilePendingError) as info:
        guard.register(
            email="rej@example.com", password=PASSWORD, metadata={"full_name": "Rejected"}
        )
    err = info.value
    assert isinstance(err, ProfileCreationError)
    assert err.sqlstate == "23514"
    uid = err.user["id"]
    assert f"profileguard ensure {uid}" in (err.hint or "")
    # The sign-up was not lost: the user committed; the profile is missing and recorded once.
    assert auth_user(installed, uid) is not None
    assert installed.scalar("select count(*) from public.profiles where id = %s", (uid,)) == 0
    assert failures_of(installed, uid) == [("trigger", "23514")]


def test_profile_failure_without_the_trigger_is_recorded_by_the_client(
    guard: ProfileGuard, installed: TestDB
) -> None:
    set_enabled(installed.settings, False)
    reject_name(installed, "Rejected")
    with pytest.raises(ProfilePendingError) as info:
        guard.register(email="rej@example.com", metadata={"full_name": "Rejected"})
    assert failures_of(installed, info.value.user["id"]) == [("client", "23514")]


def test_strict_mode_rolls_the_registration_back(installed: TestDB) -> None:
    install(installed.settings, strict=True)
    reject_name(installed, "Rejected")
    with ProfileGuard(installed.settings, identity=SupabaseAuthBackend(bcrypt_rounds=4)) as g:
        with pytest.raises(ProfileCreationError) as info:
            g.register(
                email="strict@example.com", password=PASSWORD, metadata={"full_name": "Rejected"}
            )
        assert not isinstance(info.value, ProfilePendingError)
        assert info.value.sqlstate == "23514"
        assert "strict mode" in info.value.message
        assert count(installed, "auth.users") == 0
        assert count(installed, "auth.identities") == 0
        ok = g.register(email="fine@example.com", password=PASSWORD, metadata=ADA)
    assert ok.profile["full_name"] == "Ada Lovelace"


def test_transient_failure_retries_the_whole_registration(installed: TestDB) -> None:
    """auth.identities is locked by another session: the first attempt inserts the user, then
    hits lock_timeout and rolls back; the retry after the lock is released creates one user."""
    settings = installed.settings.with_overrides(retry_attempts=10)
    blocker = installed.connect(autocommit=False)
    blocker.execute("lock table auth.identities in access exclusive mode")
    pool = ConnectionPool(
        installed.url,
        min_size=1,
        max_size=1,
        kwargs={"options": "-c lock_timeout=200ms"},
        open=True,
    )
    stop = threading.Event()

    def release_after_first_attempt() -> None:
        try:
            while pool.get_stats().get("requests_num", 0) < 2 and not stop.wait(0.005):
                pass
        finally:
            blocker.rollback()

    releaser = threading.Thread(target=release_after_first_attempt)
    releaser.start()
    try:
        g = ProfileGuard(settings, pool=pool, identity=SupabaseAuthBackend(bcrypt_rounds=4))
        result = g.register(email="retry@example.com", password=PASSWORD, metadata=ADA)
    finally:
        stop.set()
        releaser.join()
        blocker.close()
        attempts = pool.get_stats().get("requests_num", 0)
        pool.close()
    assert attempts >= 2
    assert result.profile["username"] == f"ada_{key_hash(result.id)}"  # unverified
    assert count(installed, "auth.users") == 1
    assert count(installed, "auth.identities") == 1
    assert count(installed, "public.profiles") == 1


def test_transient_failure_without_retries_leaves_nothing(installed: TestDB) -> None:
    settings = installed.settings.with_overrides(retry_attempts=1)
    with (
        installed.connect(autocommit=False) as blocker,
        ConnectionPool(
            installed.url, min_size=1, max_size=1, kwargs={"options": "-c lock_timeout=100ms"}
        ) as pool,
    ):
        blocker.execute("lock table auth.identities in access exclusive mode")
        g = ProfileGuard(settings, pool=pool, identity=SupabaseAuthBackend(bcrypt_rounds=4))
        with pytest.raises(DatabaseError) as info:
            g.register(email="retry@example.com", password=PASSWORD)
        blocker.rollback()
    assert info.value.sqlstate == "55P03"
    assert info.value.transient is True
    assert count(installed, "auth.users") == 0


def test_other_identity_tables_need_a_backend(db: TestDB) -> None:
    settings = db.settings.with_overrides(identity_table=None)
    other = settings.__class__(
        database_url=settings.database_url,
        identity=settings.identity.__class__("public", "accounts", "id"),
    )
    with ProfileGuard(other) as g, pytest.raises(ConfigError) as info:
        g.register(email="x@example.com", password=PASSWORD)
    assert "IdentityBackend" in (info.value.hint or "")


# --- ensure_on_login -----------------------------------------------------------------------------


def test_ensure_on_login_by_id_creates_the_missing_profile(
    guard: ProfileGuard, installed: TestDB
) -> None:
    set_enabled(installed.settings, False)
    uid = installed.signup(ADA, email="admin-made@example.com")  # e.g. created in the dashboard
    set_enabled(installed.settings, True)
    first = guard.ensure_on_login(uid)
    again = guard.ensure_on_login(str(uid))
    assert (first.created, first.profile_created, first.path) == (False, True, "function")
    assert (again.created, again.profile_created) == (False, False)
    assert first.profile == again.profile
    assert first.profile["full_name"] == "Ada Lovelace"
    assert first.user["email"] == "admin-made@example.com"


def test_ensure_on_login_with_supabase_jwt_claims(guard: ProfileGuard, installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    uid = installed.signup({"name": "Grace"}, email="grace@example.com")
    set_enabled(installed.settings, True)
    claims = {
        "sub": str(uid),
        "aud": "authenticated",
        "role": "authenticated",
        "exp": 2_000_000_000,
        "email": "grace@example.com",
        "app_metadata": {"provider": "google"},
        "user_metadata": {"name": "Grace"},
        "is_anonymous": False,
    }
    result = guard.ensure_on_login(claims)
    assert result.id == str(uid)
    assert result.profile_created is True
    assert result.profile["full_name"] == "Grace"
    assert count(installed, "auth.users") == 1


def test_ensure_on_login_registers_a_first_oauth_login_once(
    guard: ProfileGuard, installed: TestDB
) -> None:
    claims = {
        "sub": "12345",
        "email": "Linus@Example.com",
        "email_verified": True,
        "user_name": "torvalds",
        "full_name": "Linus Torvalds",
        "avatar_url": "https://avatars/1",
        "iss": "https://api.github.com",
        "exp": 1,
    }
    first = guard.ensure_on_login(claims, provider="github")
    second = guard.ensure_on_login({**claims, "provider": "github"})
    assert (first.created, second.created) == (True, False)
    assert first.id == second.id
    assert first.profile == second.profile
    assert first.profile["username"] == "torvalds"
    user = auth_user(installed, first.id)
    assert user is not None
    assert user["email"] == "linus@example.com"
    assert "exp" not in user["raw_user_meta_data"]
    assert user["raw_user_meta_data"]["provider_id"] == "12345"
    assert count(installed, "auth.users") == 1


def test_concurrent_first_logins_of_one_identity_make_one_user(installed: TestDB) -> None:
    threads = 6
    barrier = threading.Barrier(threads)
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    claims = {"sub": "998877", "email": "same@example.com", "user_name": "same"}
    with ProfileGuard(
        installed.settings, identity=SupabaseAuthBackend(bcrypt_rounds=4), max_size=threads
    ) as g:
        g._pool.wait()

        def login() -> None:
            barrier.wait()
            try:
                result = g.ensure_on_login(claims, provider="github")
                with lock:
                    ids.append(result.id)
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        workers = [threading.Thread(target=login) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert errors == []
    assert len(ids) == threads and len(set(ids)) == 1
    assert count(installed, "auth.users") == 1
    assert count(installed, "public.profiles") == 1


def test_provider_sub_is_never_taken_as_a_user_id(guard: ProfileGuard, installed: TestDB) -> None:
    """An IdP whose subs are UUIDs (Keycloak, Auth0…): a sub equal to an existing user's id must
    not log in as that user; it is the provider's id, so a new user is registered."""
    victim = guard.register(email="victim@example.com", password=PASSWORD)
    login = guard.ensure_on_login(
        {"sub": victim.id, "email": "idp@example.com"}, provider="keycloak"
    )
    assert login.created is True
    assert login.id != victim.id
    assert login.user["email"] == "idp@example.com"
    assert guard.ensure_on_login({"sub": victim.id}, provider="keycloak").id == login.id


def test_ensure_on_login_errors(guard: ProfileGuard, installed: TestDB) -> None:
    with pytest.raises(UserNotFoundError):
        guard.ensure_on_login(uuid.uuid4())
    with pytest.raises(UserNotFoundError):
        guard.ensure_on_login({"sub": str(uuid.uuid4()), "role": "authenticated"})
    with pytest.raises(UserNotFoundError):
        guard.ensure_on_login({"sub": "42"}, provider="github", create=False)
    with pytest.raises(InvalidUserIdError):
        guard.ensure_on_login("not-a-uuid")
    with pytest.raises(InvalidRegistrationError, match="sub"):
        guard.ensure_on_login({"email": "x@example.com"})
    with pytest.raises(InvalidRegistrationError, match="provider"):
        guard.ensure_on_login({"sub": "42"})
    # An identity whose email already belongs to another account is not linked silently.
    guard.register(email="taken@example.com", password=PASSWORD)
    with pytest.raises(UserExistsError) as info:
        guard.ensure_on_login({"sub": "77", "email": "taken@example.com"}, provider="github")
    assert info.value.conflict == "email"
    assert count(installed, "auth.users") == 1


# --- async ---------------------------------------------------------------------------------------


def test_async_register_and_login(installed: TestDB) -> None:
    async def scenario() -> None:
        backend = AsyncSupabaseAuthBackend(bcrypt_rounds=4)
        async with AsyncProfileGuard(installed.settings, identity=backend) as g:
            reg = await g.register(email="async@example.com", password=PASSWORD, metadata=ADA)
            assert (reg.created, reg.path) == (True, "trigger")
            assert reg.profile["username"] == f"ada_{key_hash(reg.id)}"
            with pytest.raises(UserExistsError):
                await g.register(email="ASYNC@example.com", password=PASSWORD)
            with pytest.raises(WeakPasswordError):
                await g.register(email="short@example.com", password="123")
            again = await g.ensure_on_login(reg.id)
            assert (again.created, again.profile) == (False, reg.profile)
            # Concurrent first logins of one identity: one user.
            claims = {"sub": "31337", "email": "g@example.com", "full_name": "Async Octo"}
            results = await asyncio.gather(
                *(g.ensure_on_login(claims, provider="github") for _ in range(5))
            )
            assert len({r.id for r in results}) == 1
            assert results[0].profile["full_name"] == "Async Octo"
            anon = await g.register(anonymous=True)
            assert anon.user["is_anonymous"] is True
            with pytest.raises(UserNotFoundError):
                await g.ensure_on_login(uuid.uuid4())

    asyncio.run(scenario())
    assert count(installed, "auth.users") == 3
    assert count(installed, "public.profiles") == 3


def test_async_profile_failure_and_fallback(installed: TestDB) -> None:
    reject_name(installed, "Rejected")

    async def scenario() -> None:
        backend = AsyncSupabaseAuthBackend(bcrypt_rounds=4)
        async with AsyncProfileGuard(installed.settings, identity=backend) as g:
            with pytest.raises(ProfilePendingError) as info:
                await g.register(email="r@example.com", metadata={"full_name": "Rejected"})
            assert failures_of(installed, info.value.user["id"]) == [("trigger", "23514")]
        uninstall(installed.settings)
        async with AsyncProfileGuard(installed.settings, identity=backend) as g:
            reg = await g.register(email="fb@example.com", metadata=ADA)
            assert reg.path == "fallback"
            assert reg.profile["full_name"] == "Ada Lovelace"

    asyncio.run(scenario())


# --- the command line ----------------------------------------------------------------------------


def run_cli(db: TestDB, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "profileguard", "--database-url", db.url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        input=stdin,
    )


def test_cli_register(installed: TestDB) -> None:
    secret = "cli-Secret-9f2"
    done = run_cli(
        installed,
        "register",
        "Cli@Example.com",
        "--password-stdin",
        "--meta",
        json.dumps(ADA),
        "--confirmed",
        "--json",
        stdin=secret + "\n",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["user"]["email"] == "cli@example.com"
    assert out["user"]["email_confirmed_at"] is not None
    assert out["profile"]["full_name"] == "Ada Lovelace"
    assert secret not in done.stdout + done.stderr
    hashed = installed.scalar(
        "select encrypted_password from auth.users where id = %s", (out["user"]["id"],)
    )
    assert bcrypt.checkpw(secret.encode(), hashed.encode())

    again = run_cli(installed, "register", "cli@example.com")
    assert again.returncode == 9
    assert "already exists" in again.stderr and "hint:" in again.stderr
    weak = run_cli(installed, "register", "w@example.com", "--password-stdin", stdin="123\n")
    assert weak.returncode == 2
    assert "123" not in weak.stderr
    bad = run_cli(installed, "register", "m@example.com", "--meta", "{not json")
    assert bad.returncode == 2
    assert "--meta is not JSON" in bad.stderr
    assert count(installed, "auth.users") == 1


# --- a role that may not write Supabase Auth's tables ---------------------------------------------


def auth_users_closed(db: TestDB) -> None:
    """The Supabase-shaped `postgres` as a project that keeps it from writing auth.users (the
    grant is per database: only this test's database changes)."""
    with db.connect_admin() as admin:
        admin.execute(
            sql.SQL("revoke insert, update on auth.users from {}").format(
                sql.Identifier(SUPABASE_POSTGRES)
            )
        )


def assert_names_the_admin_api(err: ProfileGuardError, missing: str) -> None:
    assert err.sqlstate == "42501"
    hint = err.hint or ""
    assert "connect as the role that installed profileguard" in hint
    assert "Supabase Auth's admin API" in hint
    assert "SUPABASE_URL" in hint and "SUPABASE_SERVICE_ROLE_KEY" in hint
    assert "profileguard[supabase]" in hint
    assert hint.endswith(f"(not set now: {missing})")


@pytest.mark.parametrize("installer", ["supabase_postgres"], indirect=True)
def test_register_refused_on_auth_users_names_the_admin_api(installed: TestDB) -> None:
    assert installed.role == SUPABASE_POSTGRES
    assert not installed.scalar(
        "select pg_has_role('supabase_auth_admin', 'member') or rolsuper"
        " from pg_roles where rolname = current_user"
    )
    auth_users_closed(installed)
    backend = SupabaseAuthBackend(bcrypt_rounds=4)
    with (
        ProfileGuard(installed.settings, identity=backend) as g,
        pytest.raises(DatabaseError) as refused,
    ):
        g.register(email="hosted@example.com", password=PASSWORD)
    assert "permission denied for table users" in refused.value.message
    assert_names_the_admin_api(refused.value, "SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY")

    # Half configured: the hint names what is still missing.
    settings = load_settings(
        env={"SUPABASE_URL": "https://abc.supabase.co"}, database_url=installed.url
    )
    with ProfileGuard(settings, identity=backend) as g, pytest.raises(DatabaseError) as half:
        g.register(email="hosted@example.com", password=PASSWORD)
    assert_names_the_admin_api(half.value, "SUPABASE_SERVICE_ROLE_KEY")

    async def scenario() -> DatabaseError:
        backend = AsyncSupabaseAuthBackend(bcrypt_rounds=4)
        async with AsyncProfileGuard(installed.settings, identity=backend) as g:
            with pytest.raises(DatabaseError) as caught:
                await g.register(email="hosted@example.com", password=PASSWORD)
        return caught.value

    assert_names_the_admin_api(asyncio.run(scenario()), "SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY")

    shown = run_cli(installed, "register", "hosted@example.com")
    assert shown.returncode == ExitCode.ERROR, shown.stderr
    text = " ".join(shown.stderr.split())
    assert "permission denied for table users" in text and "sqlstate: 42501" in text
    assert "Supabase Auth's admin API" in text and "SUPABASE_SERVICE_ROLE_KEY" in text
    assert count(installed, "auth.users") == 0


@pytest.mark.parametrize("installer", ["supabase_postgres"], indirect=True)
def test_register_as_a_role_it_may_not_become_names_the_admin_api(installed: TestDB) -> None:
    """Hosted `postgres` is no member of supabase_auth_admin: as_role cannot work there."""
    backend = SupabaseAuthBackend(bcrypt_rounds=4, as_role="supabase_auth_admin")
    with (
        ProfileGuard(installed.settings, identity=backend) as g,
        pytest.raises(DatabaseError) as refused,
    ):
        g.register(email="hosted@example.com", password=PASSWORD)
    assert "permission denied to set role" in refused.value.message
    assert_names_the_admin_api(refused.value, "SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY")
    assert count(installed, "auth.users") == 0

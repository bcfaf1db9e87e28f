"""The ensure() client, sync and async: creation, idempotence, bad ids, failures, fallback, retries.

Every fault here is real: a CHECK constraint the row violates, a table lock that makes the first
attempt hit lock_timeout, a pooled backend terminated by pg_terminate_backend.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from conftest import TestDB, key_hash
from psycopg_pool import ConnectionPool

from profileguard.client import AsyncProfileGuard, EnsureResult, ProfileGuard
from profileguard.config import Source, load_settings
from profileguard.db import is_transient, is_transient_sqlstate
from profileguard.errors import (
    DatabaseError,
    InvalidUserIdError,
    ProfileCreationError,
    ProfileGuardError,
    UserNotFoundError,
)
from profileguard.install import install, set_enabled, uninstall

ADA = {"full_name": "Ada Lovelace", "user_name": "ada", "avatar_url": "https://x/ada.png"}


def user_without_profile(
    db: TestDB, meta: dict[str, Any] | None = None, email: str | None = None
) -> uuid.UUID:
    """Sign a user up while the trigger is off, so no profile is created for them."""
    set_enabled(db.settings, False)
    try:
        uid = db.signup(meta, email=email)
    finally:
        set_enabled(db.settings, True)
    assert not has_profile(db, uid)
    return uid


def has_profile(db: TestDB, uid: uuid.UUID) -> bool:
    return bool(db.scalar("select exists (select from public.profiles where id = %s)", (uid,)))


def profile_json(db: TestDB, uid: uuid.UUID) -> dict[str, Any]:
    return db.scalar("select to_jsonb(p) from public.profiles p where p.id = %s", (uid,))


def client_failures(db: TestDB, uid: object) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return conn.execute(
            "select sqlstate, category, message from profileguard.events"
            " where kind = 'failure' and source = 'client' and user_id = %s",
            (str(uid),),
        ).fetchall()


def count_insert_attempts(db: TestDB) -> None:
    """Count every INSERT tried on public.profiles, in a sequence (which no rollback undoes)."""
    with db.connect() as conn:
        conn.execute("create sequence public.profile_insert_attempts")
        conn.execute(
            "create function public.count_insert_attempt() returns trigger language plpgsql as"
            " $$ begin perform nextval('public.profile_insert_attempts'); return new; end $$"
        )
        conn.execute(
            "create trigger count_insert_attempt before insert on public.profiles"
            " for each row execute function public.count_insert_attempt()"
        )


def insert_attempts(db: TestDB) -> int:
    with db.connect() as conn:
        row = conn.execute("select last_value, is_called from public.profile_insert_attempts")
        last_value, is_called = row.fetchone()  # type: ignore[misc]
    return int(last_value) if is_called else 0


def reject_name(db: TestDB, name: str) -> None:
    """A CHECK constraint existing rows need not satisfy (not valid) that rejects one full_name."""
    with db.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint reject_name"
            f" check (full_name is distinct from '{name}') not valid"
        )


# --- creation and idempotence -------------------------------------------------------------------


def test_ensure_creates_the_missing_profile_then_returns_it(installed: TestDB) -> None:
    uid = user_without_profile(installed, ADA, email="ada@example.com")
    with ProfileGuard(installed.settings) as client:
        first = client.ensure_result(uid)
        second = client.ensure_result(uid)
    assert first == EnsureResult(str(uid), True, first.profile, "function")
    assert second.created is False
    assert second.path == "function"
    assert second.profile == first.profile
    assert first.profile["full_name"] == "Ada Lovelace"
    assert first.profile["username"] == "ada"
    assert first.profile["avatar_url"] == "https://x/ada.png"
    assert has_profile(installed, uid)
    assert installed.scalar("select count(*) from public.profiles where id = %s", (uid,)) == 1


def test_ensure_returns_the_full_row_as_a_dict(installed: TestDB) -> None:
    uid = user_without_profile(installed, ADA)
    with ProfileGuard(installed.settings) as client:
        profile = client.ensure(uid)
    columns = installed.scalar(
        "select array_agg(column_name::text) from information_schema.columns"
        " where table_schema = 'public' and table_name = 'profiles'"
    )
    assert isinstance(profile, dict)
    assert set(profile) == set(columns)
    assert profile == profile_json(installed, uid)
    assert profile["id"] == str(uid)


def test_ensure_of_a_user_the_trigger_already_served(installed: TestDB) -> None:
    uid = installed.signup(ADA)
    assert has_profile(installed, uid)
    with ProfileGuard(installed.settings) as client:
        result = client.ensure_result(uid)
    assert (result.created, result.path) == (False, "function")
    assert result.profile == profile_json(installed, uid)


@pytest.mark.parametrize(
    "form",
    [str, lambda u: u, lambda u: str(u).upper(), lambda u: f" {u} "],
    ids=["str", "uuid", "upper", "spaces"],
)
def test_str_and_uuid_ids_both_work(installed: TestDB, form: Any) -> None:
    uid = user_without_profile(installed, ADA)
    with ProfileGuard(installed.settings) as client:
        result = client.ensure_result(form(uid))
    assert result.created is True
    assert result.user_id == str(uid)
    assert result.profile["id"] == str(uid)


# --- bad ids, unknown users ---------------------------------------------------------------------

BAD_IDS: list[Any] = [
    "not-a-uuid",
    "",
    "   ",
    "x" * 500,
    "z" * 150,
    None,
    "null",
    "None",
    "undefined",
    "\x00",
    "3f1c2e4a-0000-0000-0000-00000000000\x00",
    "'; drop table public.profiles; --",
    "00000000-0000-0000-0000-00000000000g",
    12345,
    -1,
    2**70,
    True,
    1.5,
    b"\x00" * 16,
    ["3f1c2e4a-0000-0000-0000-000000000000"],
]


@pytest.mark.parametrize("enabled", [True, False], ids=["function", "fallback"])
def test_malformed_ids_are_invalid_user_id_errors(installed: TestDB, enabled: bool) -> None:
    settings = installed.settings.with_overrides(enabled=enabled)
    with ProfileGuard(settings) as client:
        for bad in BAD_IDS:
            with pytest.raises(InvalidUserIdError) as info:
                client.ensure(bad)
            assert isinstance(info.value, ProfileGuardError)
            assert info.value.hint
        # Nothing was recorded as a profile failure, nothing was created, the table is intact.
        assert (
            installed.scalar("select count(*) from profileguard.events where kind = 'failure'") == 0
        )
        assert installed.scalar("select count(*) from public.profiles") == 0
        # The client is still usable afterwards.
        uid = user_without_profile(installed, ADA)
        assert client.ensure_result(uid).created is True


@pytest.mark.parametrize("enabled", [True, False], ids=["function", "fallback"])
def test_unknown_user_is_user_not_found(installed: TestDB, enabled: bool) -> None:
    unknown = uuid.uuid4()
    settings = installed.settings.with_overrides(enabled=enabled)
    with ProfileGuard(settings) as client, pytest.raises(UserNotFoundError) as info:
        client.ensure(unknown)
    assert str(unknown) in info.value.message
    assert info.value.hint
    assert not has_profile(installed, unknown)
    assert client_failures(installed, unknown) == []


# --- permanent failures: raised at once, recorded once ------------------------------------------


def test_permanent_failure_is_raised_recorded_and_not_retried(installed: TestDB) -> None:
    uid = user_without_profile(installed, {"full_name": "Blocked Name"})
    reject_name(installed, "Blocked Name")
    count_insert_attempts(installed)
    settings = installed.settings.with_overrides(retry_attempts=5)
    with ProfileGuard(settings) as client, pytest.raises(ProfileCreationError) as info:
        client.ensure(uid)
    err = info.value
    assert isinstance(err, DatabaseError)
    assert err.sqlstate == "23514"
    assert err.transient is False
    assert "reject_name" in err.message
    assert err.hint
    # One INSERT was tried (no retry of a permanent error), and the client recorded one failure.
    assert insert_attempts(installed) == 1
    assert client_failures(installed, uid) == [("23514", "constraint", err.message[:2000])]
    assert not has_profile(installed, uid)


def test_permanent_failure_on_the_fallback_path(installed: TestDB) -> None:
    uid = user_without_profile(installed, {"full_name": "Blocked Name"})
    reject_name(installed, "Blocked Name")
    count_insert_attempts(installed)
    uninstall(installed.settings)
    settings = installed.settings.with_overrides(retry_attempts=5)
    with ProfileGuard(settings) as client, pytest.raises(ProfileCreationError) as info:
        client.ensure(uid)
    assert info.value.sqlstate == "23514"
    assert insert_attempts(installed) == 1
    assert not has_profile(installed, uid)


# --- the fallback path --------------------------------------------------------------------------


def test_fallback_after_uninstall(installed: TestDB) -> None:
    assert uninstall(installed.settings) is True
    assert installed.scalar("select to_regclass('public.profiles') is not null")
    uid = installed.signup(ADA, email="ada@example.com")
    assert not has_profile(installed, uid)  # no trigger any more
    with ProfileGuard(installed.settings) as client:
        first = client.ensure_result(uid)
        second = client.ensure_result(str(uid))
    assert (first.created, first.path) == (True, "fallback")
    assert (second.created, second.path) == (False, "fallback")
    assert first.user_id == second.user_id == str(uid)
    assert first.profile == second.profile == profile_json(installed, uid)
    assert (first.profile["full_name"], first.profile["username"]) == ("Ada Lovelace", "ada")


def test_fallback_username_is_deduplicated_like_the_function(installed: TestDB) -> None:
    taken = installed.signup({"user_name": "ada"})
    uninstall(installed.settings)
    uid = installed.signup({"user_name": "ada"})
    with ProfileGuard(installed.settings) as client:
        result = client.ensure_result(uid)
    assert result.path == "fallback"
    assert profile_json(installed, taken)["username"] == "ada"
    assert result.profile["username"] == "ada_" + key_hash(uid)


@pytest.mark.parametrize("how", ["with_overrides", "replace", "env"])
def test_disabled_client_uses_the_fallback_even_when_installed(installed: TestDB, how: str) -> None:
    if how == "with_overrides":
        settings = installed.settings.with_overrides(enabled=False)
    elif how == "replace":
        settings = replace(installed.settings, enabled=False)
    else:
        settings = load_settings(env={"PROFILEGUARD_ENABLED": "0"}, database_url=installed.url)
    assert settings.enabled is False
    uid = user_without_profile(installed, ADA)
    with ProfileGuard(settings) as client:
        first = client.ensure_result(uid)
        second = client.ensure_result(uid)
    assert (first.created, first.path) == (True, "fallback")
    assert (second.created, second.path) == (False, "fallback")
    assert first.profile == profile_json(installed, uid)
    # The installed function was not used: it records its creations as repairs, the fallback not.
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and user_id = %s",
            (str(uid),),
        )
        == 0
    )


def test_function_path_records_a_repair(installed: TestDB) -> None:
    uid = user_without_profile(installed, ADA)
    with ProfileGuard(installed.settings, source="my-app") as client:
        client.ensure(uid)
    assert (
        installed.scalar(
            "select source from profileguard.events where kind = 'repair' and user_id = %s",
            (str(uid),),
        )
        == "my-app"
    )


# --- the async twin -----------------------------------------------------------------------------


def test_async_create_idempotent_and_not_found(installed: TestDB) -> None:
    uid = user_without_profile(installed, ADA)
    unknown = uuid.uuid4()

    async def main() -> tuple[EnsureResult, EnsureResult, BaseException, BaseException]:
        async with AsyncProfileGuard(installed.settings) as client:
            first = await client.ensure_result(uid)
            second = await client.ensure_result(str(uid))
            with pytest.raises(UserNotFoundError) as missing:
                await client.ensure(unknown)
            with pytest.raises(InvalidUserIdError) as bad:
                await client.ensure("not-a-uuid")
            return first, second, missing.value, bad.value

    first, second, missing, bad = asyncio.run(main())
    assert (first.created, first.path) == (True, "function")
    assert (second.created, second.path) == (False, "function")
    assert first.profile == second.profile == profile_json(installed, uid)
    assert str(unknown) in str(missing)
    assert isinstance(bad, ProfileGuardError)


def test_async_fallback_after_uninstall(installed: TestDB) -> None:
    uninstall(installed.settings)
    uid = installed.signup(ADA)
    unknown = uuid.uuid4()

    async def main() -> tuple[EnsureResult, EnsureResult]:
        async with AsyncProfileGuard(installed.settings) as client:
            first = await client.ensure_result(uid)
            second = await client.ensure_result(uid)
            with pytest.raises(UserNotFoundError):
                await client.ensure(unknown)
            return first, second

    first, second = asyncio.run(main())
    assert (first.created, first.path) == (True, "fallback")
    assert (second.created, second.path) == (False, "fallback")
    assert first.profile == profile_json(installed, uid)


def test_async_disabled_uses_fallback_and_concurrent_calls_create_once(installed: TestDB) -> None:
    uid = user_without_profile(installed, ADA)

    async def main() -> list[EnsureResult]:
        settings = installed.settings.with_overrides(enabled=False)
        async with AsyncProfileGuard(settings, max_size=4) as client:
            return list(await asyncio.gather(*(client.ensure_result(uid) for _ in range(8))))

    results = asyncio.run(main())
    assert {r.path for r in results} == {"fallback"}
    assert sum(r.created for r in results) == 1
    assert all(r.profile == results[0].profile for r in results)


def test_async_permanent_failure(installed: TestDB) -> None:
    uid = user_without_profile(installed, {"full_name": "Blocked Name"})
    reject_name(installed, "Blocked Name")
    count_insert_attempts(installed)

    async def main() -> ProfileCreationError:
        async with AsyncProfileGuard(installed.settings) as client:
            with pytest.raises(ProfileCreationError) as info:
                await client.ensure(uid)
            return info.value

    err = asyncio.run(main())
    assert err.sqlstate == "23514"
    assert insert_attempts(installed) == 1
    assert [row[0] for row in client_failures(installed, uid)] == ["23514"]


# --- transient faults: retried ------------------------------------------------------------------


def lock_timeout_pool(db: TestDB) -> ConnectionPool:
    pool = ConnectionPool(
        db.url, min_size=1, max_size=1, kwargs={"options": "-c lock_timeout=200ms"}, open=True
    )
    pool.wait()
    return pool


def test_lock_timeout_without_retries_is_a_transient_error(installed: TestDB) -> None:
    """The fault the next test relies on is real: one attempt under the lock fails with 55P03."""
    uid = user_without_profile(installed, ADA)
    settings = installed.settings.with_overrides(retry_attempts=1)
    with installed.connect(autocommit=False) as blocker, lock_timeout_pool(installed) as pool:
        blocker.execute("lock table public.profiles in access exclusive mode")
        with pytest.raises(DatabaseError) as info:
            ProfileGuard(settings, pool=pool).ensure(uid)
        blocker.rollback()
    assert info.value.sqlstate == "55P03"
    assert info.value.transient is True
    assert not isinstance(info.value, ProfileCreationError)
    assert pool.get_stats().get("requests_num", 0) == 1
    assert not has_profile(installed, uid)
    assert client_failures(installed, uid) == []


def test_lock_timeout_is_retried_until_the_lock_is_released(installed: TestDB) -> None:
    uid = user_without_profile(installed, ADA)
    settings = installed.settings.with_overrides(retry_attempts=10)
    blocker = installed.connect(autocommit=False)
    blocker.execute("lock table public.profiles in access exclusive mode")
    with lock_timeout_pool(installed) as pool:
        stop = threading.Event()

        def release_after_first_attempt_failed() -> None:
            # Each attempt takes one connection from the pool: a second request means the first
            # attempt (which could not get past the lock) has failed and is being retried.
            try:
                while pool.get_stats().get("requests_num", 0) < 2 and not stop.wait(0.005):
                    pass
            finally:
                blocker.rollback()

        releaser = threading.Thread(target=release_after_first_attempt_failed)
        releaser.start()
        try:
            result = ProfileGuard(settings, pool=pool).ensure_result(uid)
        finally:
            stop.set()
            releaser.join()
            blocker.close()
        attempts = pool.get_stats().get("requests_num", 0)
    assert result.created is True
    assert result.profile == profile_json(installed, uid)
    assert attempts >= 2
    assert client_failures(installed, uid) == []


def test_terminated_pooled_connection_is_retried(installed: TestDB) -> None:
    first, second = user_without_profile(installed, ADA), user_without_profile(installed)
    with ConnectionPool(installed.url, min_size=1, max_size=1, open=True) as pool:
        client = ProfileGuard(installed.settings, pool=pool)
        assert client.ensure_result(first).created is True
        with pool.connection() as conn:
            old_pid = conn.info.backend_pid
        assert installed.scalar("select pg_terminate_backend(%s)", (old_pid,)) is True
        with installed.connect() as admin:  # wait until the backend is really gone
            for _ in range(1000):
                gone = admin.execute(
                    "select not exists (select from pg_stat_activity where pid = %s)", (old_pid,)
                ).fetchone()
                if gone and gone[0]:
                    break
                threading.Event().wait(0.01)
        before = pool.get_stats()
        result = client.ensure_result(second)
        after = pool.get_stats()
        with pool.connection() as conn:
            new_pid = conn.info.backend_pid
    assert result.created is True
    assert result.profile == profile_json(installed, second)
    assert new_pid != old_pid
    # The dead connection came back broken once and was replaced; the call took two checkouts.
    assert after.get("returns_bad", 0) - before.get("returns_bad", 0) == 1
    assert after.get("requests_num", 0) - before.get("requests_num", 0) >= 2


# --- which errors are transient -----------------------------------------------------------------

TRANSIENT = [
    "40001",
    "40P01",
    "55P03",
    "57P01",
    "57P02",
    "57P03",
    "08006",
    "08001",
    "08003",
    "53300",
]
PERMANENT = [
    "23514",
    "23505",
    "23502",
    "42501",
    "22P02",
    "42P01",
    "42883",
    "P0002",
    "XX000",
    "57014",
    "53100",
    "22001",
]


@pytest.mark.parametrize("sqlstate", TRANSIENT)
def test_transient_sqlstates(sqlstate: str) -> None:
    assert is_transient_sqlstate(sqlstate) is True
    exc = psycopg.errors.lookup(sqlstate)("boom")
    assert exc.sqlstate == sqlstate
    assert is_transient(exc) is True
    assert is_transient(DatabaseError("boom", sqlstate=sqlstate, transient=True)) is True


@pytest.mark.parametrize("sqlstate", PERMANENT)
def test_permanent_sqlstates(sqlstate: str) -> None:
    assert is_transient_sqlstate(sqlstate) is False
    exc = psycopg.errors.lookup(sqlstate)("boom")
    assert is_transient(exc) is False
    assert is_transient(ProfileCreationError("boom", sqlstate=sqlstate)) is False


def test_transient_without_sqlstate() -> None:
    assert is_transient_sqlstate(None) is False
    # A broken connection has no SQLSTATE: worth a retry. Other errors without one are not.
    assert is_transient(psycopg.OperationalError("server closed the connection")) is True
    assert is_transient(psycopg.InterfaceError("the connection is closed")) is True
    assert is_transient(psycopg.DataError("cannot contain NUL")) is False
    assert is_transient(ValueError("nope")) is False
    assert is_transient(UserNotFoundError("no user")) is False
    assert is_transient(InvalidUserIdError("bad id")) is False


def test_real_errors_from_the_server_are_classified(installed: TestDB) -> None:
    with installed.connect() as conn:
        with pytest.raises(psycopg.Error) as bad_uuid:
            conn.execute("select 'x'::uuid")
        with pytest.raises(psycopg.Error) as serialization:
            conn.execute("do $$ begin raise exception using errcode = '40001'; end $$")
    assert bad_uuid.value.sqlstate == "22P02" and not is_transient(bad_uuid.value)
    assert serialization.value.sqlstate == "40001" and is_transient(serialization.value)


# --- an integer-keyed identity table ------------------------------------------------------------


def test_integer_keys_accept_int_and_str_ids(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "create schema app;"
            " create table app.members (id bigint primary key, email text, meta jsonb);"
            " create table app.member_profiles (id bigint primary key references app.members,"
            " username text unique, full_name text)"
        )
    settings = load_settings(
        env={},
        database_url=db.url,
        identity_table="app.members",
        profile_table="app.member_profiles",
    )
    settings = replace(
        settings,
        mapping={
            "full_name": (Source("meta", ("name",)),),
            "username": (Source("email", (), "localpart"),),
        },
        mapping_is_default=False,
    )
    install(settings, enabled=False)
    with db.connect() as conn:
        conn.execute(
            "insert into app.members values (5, 'five@x.org', '{\"name\": \"Five\"}'),"
            " (6, 'six@x.org', '{}'), (7, 'seven@x.org', null)"
        )
    assert db.scalar("select count(*) from app.member_profiles") == 0
    with ProfileGuard(settings) as client:
        five = client.ensure_result(5)
        again = client.ensure_result("5")
        with pytest.raises(InvalidUserIdError):
            client.ensure("five")
        with pytest.raises(InvalidUserIdError):
            client.ensure(2**70)  # out of bigint range: 22003
        with pytest.raises(UserNotFoundError):
            client.ensure(8)
    with ProfileGuard(replace(settings, enabled=False)) as client:
        six = client.ensure_result(6)
        with pytest.raises(InvalidUserIdError):
            client.ensure(uuid.uuid4())
        with pytest.raises(UserNotFoundError):
            client.ensure(8)
    assert (five.created, five.path, five.user_id) == (True, "function", "5")
    assert five.profile == {"id": 5, "username": "five", "full_name": "Five"}
    assert (again.created, again.profile) == (False, five.profile)
    assert (six.created, six.path, six.profile["username"]) == (True, "fallback", "six")

"""register() through Supabase Auth's admin API, against a local stand-in of that API.

The stand-in (tests/auth_standin.py) is a real HTTP server that follows the documented shapes
and writes auth.users and auth.identities as Supabase Auth does; it is not Supabase Auth. The
database, the trigger and ensure_profile are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import bcrypt
import pytest
from auth_standin import KEY, auth_standin
from conftest import SUPABASE_POSTGRES, TestDB
from psycopg import sql

from profileguard.client import AsyncProfileGuard, ProfileGuard, SupabaseAuthBackend
from profileguard.client.admin_api import AsyncSupabaseAdminAPIBackend, SupabaseAdminAPIBackend
from profileguard.config import Settings, load_settings
from profileguard.errors import (
    ConfigError,
    ConnectionFailedError,
    DatabaseError,
    InvalidRegistrationError,
    UserExistsError,
    WeakPasswordError,
)
from profileguard.install import set_enabled

PASSWORD = "correct horse battery staple"
ADA = {"full_name": "Ada Lovelace", "user_name": "ada"}


def api_settings(db: TestDB, url: str, key: str = KEY) -> Settings:
    return load_settings(
        env={"SUPABASE_URL": url, "SUPABASE_SERVICE_ROLE_KEY": key}, database_url=db.url
    )


def user_row(db: TestDB, uid: str) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute("select to_jsonb(u) from auth.users u where id = %s", (uid,)).fetchone()
    assert row is not None
    return dict(row[0])


def test_register_goes_through_the_admin_api_then_ensures_the_profile(installed: TestDB) -> None:
    with auth_standin(installed.url) as api:
        settings = api_settings(installed, api.url)
        with ProfileGuard(settings) as guard:
            assert isinstance(guard.identity, SupabaseAdminAPIBackend)
            result = guard.register(
                email=" Ada@Example.com ", password=PASSWORD, metadata=ADA, email_confirmed=True
            )
    # The request as the admin API documents it, with the service_role key.
    [request] = api.requests
    assert request["path"] == "/auth/v1/admin/users"
    assert request["headers"]["apikey"] == KEY
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["body"] == {
        "id": result.id,
        "email": "ada@example.com",
        "password": PASSWORD,
        "email_confirm": True,
        "user_metadata": ADA,
        "app_metadata": {"provider": "email", "providers": ["email"]},
    }
    # Written by the stand-in as Supabase Auth writes it; the trigger made the profile.
    user = user_row(installed, result.id)
    assert user["role"] == "authenticated" and user["email_confirmed_at"] is not None
    assert bcrypt.checkpw(PASSWORD.encode(), user["encrypted_password"].encode())
    assert (
        installed.scalar("select provider from auth.identities where user_id = %s", (result.id,))
        == "email"
    )
    assert result.created and result.profile["full_name"] == "Ada Lovelace"
    assert result.path == "trigger"
    assert result.user["email"] == "ada@example.com"
    assert installed.scalar("select count(*) from profileguard.failures") == 0


def test_the_profile_is_ensured_when_no_trigger_made_it(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    with (
        auth_standin(installed.url) as api,
        ProfileGuard(api_settings(installed, api.url)) as guard,
    ):
        result = guard.register(email="grace@example.com", metadata={"full_name": "Grace"})
    assert "password" not in api.received()[0]  # passwordless: Supabase Auth picks one
    assert result.profile_created and result.path == "function"
    assert (
        installed.scalar("select full_name from public.profiles where id = %s", (result.id,))
        == "Grace"
    )


def test_duplicate_email_is_a_422_email_exists_and_a_user_exists_error(
    installed: TestDB,
) -> None:
    with (
        auth_standin(installed.url) as api,
        ProfileGuard(api_settings(installed, api.url)) as guard,
    ):
        guard.register(email="ada@example.com", password=PASSWORD)
        with pytest.raises(UserExistsError) as caught:
            guard.register(email="ADA@example.com", password=PASSWORD)
    assert caught.value.conflict == "email"
    assert len(api.requests) == 2
    assert installed.scalar("select count(*) from auth.users") == 1


def test_refusals_become_clear_errors(installed: TestDB) -> None:
    with auth_standin(installed.url, min_password_length=12) as api:
        with ProfileGuard(api_settings(installed, api.url)) as guard:
            with pytest.raises(WeakPasswordError) as weak:
                guard.register(email="short@example.com", password="only8chr")
            assert weak.value.reasons == ("length",)
            # Not what the admin API creates: refused before any request.
            for kwargs in ({"anonymous": True}, {"provider": "github", "provider_id": "42"}):
                with pytest.raises(InvalidRegistrationError, match="admin API"):
                    guard.register(**kwargs)
        with (
            ProfileGuard(api_settings(installed, api.url, key="anon-key")) as guard,
            pytest.raises(ConfigError, match="HTTP 401") as refused,
        ):
            guard.register(email="x@example.com", password=PASSWORD)
        assert "SUPABASE_SERVICE_ROLE_KEY" in (refused.value.hint or "")
        with (
            ProfileGuard(api_settings(installed, api.url + "/nowhere")) as guard,
            pytest.raises(ConfigError, match="404"),
        ):
            guard.register(email="y@example.com", password=PASSWORD)
        # A profile trigger that aborts the sign-up: Supabase Auth answers 500.
        with installed.connect() as conn:
            conn.execute(
                "create function public.refuse() returns trigger language plpgsql"
                " as $$ begin raise exception 'no'; end $$"
            )
            conn.execute(
                "create trigger refuse after insert on auth.users"
                " for each row execute function public.refuse()"
            )
        with (
            ProfileGuard(api_settings(installed, api.url)) as guard,
            pytest.raises(Exception, match="Database error creating new user") as failed,
        ):
            guard.register(email="z@example.com", password=PASSWORD)
        assert "profileguard audit" in (getattr(failed.value, "hint", "") or "")
    assert installed.scalar("select count(*) from auth.users") == 0


def test_a_lost_response_is_retried_and_finds_the_user_by_its_id(installed: TestDB) -> None:
    with (
        auth_standin(installed.url, drop_next_response=True) as api,
        ProfileGuard(api_settings(installed, api.url)) as guard,
    ):
        result = guard.register(email="lost@example.com", password=PASSWORD, metadata=ADA)
    # The first POST committed the user and got no answer; the retry found it by id.
    assert len(api.requests) == 1
    assert installed.scalar("select count(*) from auth.users") == 1
    assert result.created and result.profile["full_name"] == "Ada Lovelace"


def test_an_unreachable_api_is_a_connection_error(installed: TestDB) -> None:
    from monitoring import free_port

    settings = api_settings(installed, f"http://127.0.0.1:{free_port()}")
    with ProfileGuard(settings) as guard, pytest.raises(ConnectionFailedError) as caught:
        guard.register(email="nobody@example.com", password=PASSWORD)
    assert "SUPABASE_URL" in (caught.value.hint or "")
    assert installed.scalar("select count(*) from auth.users") == 0


def test_async_register_through_the_admin_api(installed: TestDB) -> None:
    async def go(url: str) -> Any:
        async with AsyncProfileGuard(api_settings(installed, url)) as guard:
            assert isinstance(guard.identity, AsyncSupabaseAdminAPIBackend)
            first = await guard.register(email="async@example.com", password=PASSWORD, metadata=ADA)
            with pytest.raises(UserExistsError):
                await guard.register(email="async@example.com", password=PASSWORD)
            return first

    with auth_standin(installed.url) as api:
        result = asyncio.run(go(api.url))
    assert len(api.requests) == 2
    assert result.profile["full_name"] == "Ada Lovelace"


def test_without_the_api_settings_the_sql_backend_stays(installed: TestDB) -> None:
    with ProfileGuard(installed.settings) as guard:
        assert type(guard.identity) is SupabaseAuthBackend
    assert load_settings(env={"SUPABASE_URL": "https://x.supabase.co"}).supabase_url
    with pytest.raises(ConfigError, match="SUPABASE_URL"):
        load_settings(env={"SUPABASE_URL": "x.supabase.co"})
    hidden = load_settings(env={"SUPABASE_SERVICE_ROLE_KEY": "secret-key"})
    assert "secret-key" not in repr(hidden) and "secret-key" not in json.dumps(hidden.describe())


def test_cli_register_uses_the_admin_api_from_the_environment(installed: TestDB) -> None:
    with auth_standin(installed.url) as api:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
        }
        env.update(SUPABASE_URL=api.url, SUPABASE_SERVICE_ROLE_KEY=KEY)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "profileguard",
                "--database-url",
                installed.url,
                "register",
                "cli@example.com",
                "--password-stdin",
                "--json",
            ],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        again = subprocess.run(
            [
                sys.executable,
                "-m",
                "profileguard",
                "--database-url",
                installed.url,
                "register",
                "cli@example.com",
                "--password-stdin",
            ],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert again.returncode == 9, again.stderr  # ExitCode.USER_EXISTS
    assert [r["email"] for r in api.received()] == ["cli@example.com", "cli@example.com"]
    assert PASSWORD not in done.stdout + done.stderr
    assert json.loads(done.stdout)["created"] is True


@pytest.mark.parametrize("installer", ["supabase_postgres"], indirect=True)
def test_a_refusal_through_the_admin_api_does_not_point_at_the_admin_api(
    installed: TestDB,
) -> None:
    """The admin API created the user, but this role may not read auth.users: the hint is the
    plain one (the admin API is already in use), not advice to switch to it."""
    with installed.connect_admin() as admin:
        admin.execute(
            sql.SQL("revoke select on auth.users from {}").format(sql.Identifier(SUPABASE_POSTGRES))
        )
    with auth_standin(installed.admin_url) as api:
        settings = api_settings(installed, api.url)
        with ProfileGuard(settings) as guard, pytest.raises(DatabaseError) as refused:
            guard.register(email="read@example.com", password=PASSWORD)
    assert refused.value.sqlstate == "42501"
    assert "permission denied for table users" in refused.value.message
    assert "connect as the role that installed profileguard" in (refused.value.hint or "")
    assert "admin API" not in (refused.value.hint or "")
    assert [r["email"] for r in api.received()] == ["read@example.com"]

"""The example app end to end: sign-up, OAuth first login, profile reads, token checks."""

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from fastapi_app.app import create_app, get_oauth_exchange, issue_token
from profileguard.config import Settings
from profileguard.install import set_enabled

SECRET = "test-secret"

GITHUB = {
    "iss": "https://api.github.com",
    "name": "The Octocat",
    "full_name": "The Octocat",
    "user_name": "octocat",
    "preferred_username": "octocat",
    "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
    "email_verified": True,
}
GOOGLE = {
    "iss": "https://accounts.google.com",
    "name": "Grace Hopper",
    "full_name": "Grace Hopper",
    "picture": "https://lh3.googleusercontent.com/g",
    "email_verified": True,
}


@pytest.fixture
def client(example_settings: Settings) -> Iterator[TestClient]:
    app = create_app(example_settings, jwt_secret=SECRET, bcrypt_rounds=4)

    async def fake_provider(provider: str, code: str) -> dict[str, Any]:
        """Stands in for the provider's token endpoint: the code carries the user's id."""
        claims = {"github": GITHUB, "google": GOOGLE}[provider]
        return {**claims, "sub": code, "email": f"{provider}-{code}@example.com"}

    app.dependency_overrides[get_oauth_exchange] = lambda: fake_provider
    with TestClient(app) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def count(settings: Settings, query: str, *params: Any) -> int:
    with psycopg.connect(settings.conninfo()) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def test_signup_returns_the_profile_and_a_token_that_reads_it(
    client: TestClient, example_settings: Settings
) -> None:
    email = unique_email()
    handle = "ada_" + uuid.uuid4().hex[:6]
    response = client.post(
        "/auth/signup",
        json={
            "email": email,
            "password": "correct horse",
            "full_name": "Ada Lovelace",
            "username": handle,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] is True
    assert body["user"]["email"] == email
    assert body["profile"]["full_name"] == "Ada Lovelace"
    # A name typed into an email sign-up gets the key-hash suffix by default
    # ([username] unverified = "suffix"; "plain" gives it as typed when free).
    suffix = hashlib.md5(str(body["user"]["id"]).encode()).hexdigest()[:8]
    assert body["profile"]["username"] == f"{handle}_{suffix}"
    assert "encrypted_password" not in body["user"]
    me = client.get("/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json() == body["profile"]
    assert (
        count(
            example_settings,
            "select count(*) from public.profiles where id = %s",
            body["user"]["id"],
        )
        == 1
    )


def test_signup_errors(client: TestClient) -> None:
    email = unique_email()
    assert (
        client.post("/auth/signup", json={"email": email, "password": "long enough"}).status_code
        == 201
    )
    taken = client.post("/auth/signup", json={"email": email.upper(), "password": "long enough"})
    assert taken.status_code == 409
    weak = client.post("/auth/signup", json={"email": unique_email(), "password": "123"})
    assert weak.status_code == 422
    assert weak.json()["detail"]["reasons"] == ["length"]
    assert "123" not in weak.text
    bad = client.post("/auth/signup", json={"email": "nope", "password": "long enough"})
    assert bad.status_code == 422
    assert "invalid email" in bad.json()["detail"]


def test_oauth_callback_registers_the_first_login_once(client: TestClient) -> None:
    code = str(uuid.uuid4().int)[:12]
    first = client.get(f"/auth/callback/github?code={code}")
    assert first.status_code == 200, first.text
    assert first.json()["created"] is True
    profile = first.json()["profile"]
    assert profile["full_name"] == "The Octocat"
    assert profile["avatar_url"] == GITHUB["avatar_url"]
    assert profile["username"].startswith("octocat")  # suffixed when another test took it
    again = client.get(f"/auth/callback/github?code={code}")
    assert again.json()["created"] is False
    assert again.json()["user"]["id"] == first.json()["user"]["id"]
    me = client.get("/me", headers=bearer(again.json()["access_token"]))
    assert me.json() == profile


def test_google_callback_maps_name_and_picture(client: TestClient) -> None:
    result = client.get(f"/auth/callback/google?code={uuid.uuid4().int % 10**12}")
    assert result.status_code == 200, result.text
    profile = result.json()["profile"]
    assert profile["full_name"] == "Grace Hopper"
    assert profile["avatar_url"] == GOOGLE["picture"]
    assert profile["username"] is None  # Google gives no handle; none is made from the email


def test_me_creates_a_profile_that_was_missing(
    client: TestClient, example_settings: Settings
) -> None:
    """A user made while the trigger was off (e.g. imported by hand) gets a profile on /me."""
    uid = uuid.uuid4()
    set_enabled(example_settings, False)
    try:
        with psycopg.connect(example_settings.conninfo()) as conn:
            conn.execute(
                "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
                " values (%s, 'authenticated', 'authenticated', %s,"
                ' \'{"full_name": "Imported"}\', now())',
                (uid, unique_email()),
            )
    finally:
        set_enabled(example_settings, True)
    assert count(example_settings, "select count(*) from public.profiles where id = %s", uid) == 0
    token = issue_token({"id": uid, "email": None}, SECRET)
    me = client.get("/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json()["full_name"] == "Imported"
    assert count(example_settings, "select count(*) from public.profiles where id = %s", uid) == 1


def test_tokens_are_checked(client: TestClient) -> None:
    assert client.get("/me").status_code == 401
    assert client.get("/me", headers={"Authorization": "Basic abc"}).status_code == 401
    signed = client.post("/auth/signup", json={"email": unique_email(), "password": "secret!1"})
    token = signed.json()["access_token"]
    head, body, sig = token.split(".")
    assert client.get("/me", headers=bearer(f"{head}.{body}.{sig[:-2]}AA")).status_code == 401
    forged = issue_token(signed.json()["user"], "another-secret")
    assert client.get("/me", headers=bearer(forged)).status_code == 401
    expired = issue_token(signed.json()["user"], SECRET, now=time.time() - 7200)
    assert client.get("/me", headers=bearer(expired)).status_code == 401
    gone = issue_token({"id": uuid.uuid4()}, SECRET)  # valid token, no such user
    assert client.get("/me", headers=bearer(gone)).status_code == 401
    assert client.get("/me", headers=bearer(token)).status_code == 200


def test_unconfigured_oauth_is_501(example_settings: Settings) -> None:
    with TestClient(create_app(example_settings, jwt_secret=SECRET)) as plain:
        assert plain.get("/auth/callback/github?code=1").status_code == 501
        assert plain.get("/healthz").json() == {"status": "ok"}

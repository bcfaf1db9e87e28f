"""A local stand-in for Supabase Auth's admin API (POST /auth/v1/admin/users), for the tests.

It is not Supabase Auth: it follows the documented request and response shapes of
supabase/auth's internal/api/admin.go and writes the rows as that code does, in one transaction
as `supabase_auth_admin` with search_path `auth`: the user inserted with role '', its email
identity inserted, the role set by UPDATE, app_metadata merged, the email confirmed. A trigger
error comes back as HTTP 500 "Database error creating new user". A real HTTP server on a free
port, so the backend's real HTTP client is what is tested.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import bcrypt
import psycopg
from monitoring import free_port
from psycopg.types.json import Jsonb

KEY = "service-role-key-for-tests"
DUPLICATE_EMAIL_MSG = "A user with this email address has already been registered"


@dataclass
class StandIn:
    """The running stand-in: its URL, what it received, and knobs for faults."""

    url: str
    database_url: str
    min_password_length: int = 6
    drop_next_response: bool = False  # commit the user, then close without answering
    requests: list[dict[str, Any]] = field(default_factory=list)

    def received(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]


def _error(status: int, code: str, msg: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return status, {"code": status, "error_code": code, "msg": msg, **extra}


def _user_json(conn: psycopg.Connection, uid: str) -> dict[str, Any]:
    row = conn.execute(
        "select json_build_object('id', u.id, 'aud', u.aud, 'role', u.role, 'email', u.email,"
        " 'email_confirmed_at', u.email_confirmed_at, 'phone', coalesce(u.phone, ''),"
        " 'confirmed_at', u.confirmed_at, 'last_sign_in_at', u.last_sign_in_at,"
        " 'app_metadata', u.raw_app_meta_data, 'user_metadata', u.raw_user_meta_data,"
        " 'identities', coalesce((select json_agg(json_build_object('identity_id', i.id,"
        "   'id', i.provider_id, 'user_id', i.user_id, 'identity_data', i.identity_data,"
        "   'provider', i.provider, 'created_at', i.created_at, 'updated_at', i.updated_at,"
        "   'email', i.email)) from auth.identities i where i.user_id = u.id), '[]'),"
        " 'created_at', u.created_at, 'updated_at', u.updated_at,"
        " 'is_anonymous', u.is_anonymous)"
        " from auth.users u where u.id = %s",
        (uid,),
    ).fetchone()
    assert row is not None
    return dict(row[0])


def create_user(standin: StandIn, body: Any) -> tuple[int, dict[str, Any]]:
    """adminUserCreate, as supabase/auth does it (email users)."""
    if not isinstance(body, dict):
        return _error(400, "bad_json", "Could not parse request body as JSON")
    email = str(body.get("email") or "").strip().lower()
    if not email:
        return _error(
            400, "validation_failed", "Cannot create a user without either an email or phone"
        )
    password = body.get("password")
    if isinstance(password, str) and password and len(password) < standin.min_password_length:
        return _error(
            422,
            "weak_password",
            f"Password should be at least {standin.min_password_length} characters.",
            weak_password={"reasons": ["length"]},
        )
    uid = str(body.get("id") or uuid.uuid4())
    secret = password if isinstance(password, str) and password else uuid.uuid4().hex
    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4, prefix=b"2a")).decode()
    with psycopg.connect(standin.database_url, autocommit=True) as conn:
        if conn.execute(
            "select 1 from auth.users where email = %s and not is_sso_user", (email,)
        ).fetchone():
            return _error(422, "email_exists", DUPLICATE_EMAIL_MSG)
        try:
            with conn.transaction():
                conn.execute("set local role supabase_auth_admin")
                conn.execute("set local search_path = auth")
                conn.execute(
                    "insert into users (instance_id, id, aud, role, email, encrypted_password,"
                    " raw_app_meta_data, raw_user_meta_data, is_super_admin, created_at,"
                    " updated_at, confirmation_token, recovery_token, email_change_token_new,"
                    " email_change)"
                    " values ('00000000-0000-0000-0000-000000000000', %s, 'authenticated', '',"
                    " %s, %s, %s, %s, false, now(), now(), '', '', '', '')",
                    (
                        uid,
                        email,
                        hashed,
                        Jsonb({"provider": "email", "providers": ["email"]}),
                        Jsonb(body.get("user_metadata") or {}),
                    ),
                )
                conn.execute(
                    "insert into identities (provider_id, user_id, identity_data, provider,"
                    " created_at, updated_at) values (%s, %s, %s, 'email', now(), now())",
                    (
                        uid,
                        uid,
                        Jsonb(
                            {
                                "sub": uid,
                                "email": email,
                                "email_verified": False,
                                "phone_verified": False,
                            }
                        ),
                    ),
                )
                conn.execute(
                    "update users set role = 'authenticated', updated_at = now() where id = %s",
                    (uid,),
                )
                if isinstance(body.get("app_metadata"), dict):
                    conn.execute(
                        "update users set raw_app_meta_data = raw_app_meta_data || %s"
                        " where id = %s",
                        (Jsonb(body["app_metadata"]), uid),
                    )
                if body.get("email_confirm"):
                    conn.execute(
                        "update users set email_confirmed_at = now() where id = %s", (uid,)
                    )
        except psycopg.Error:
            return _error(500, "unexpected_failure", "Database error creating new user")
        return 200, _user_json(conn, uid)


@contextmanager
def auth_standin(database_url: str, **knobs: Any) -> Iterator[StandIn]:
    """The stand-in on a free port of 127.0.0.1, writing to `database_url`."""
    port = free_port()
    standin = StandIn(f"http://127.0.0.1:{port}", database_url, **knobs)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
            standin.requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": body}
            )
            if self.path != "/auth/v1/admin/users":
                self._send(*_error(404, "not_found", "Not found"))
                return
            if (
                self.headers.get("apikey") != KEY
                or self.headers.get("Authorization") != f"Bearer {KEY}"
            ):
                self._send(
                    *_error(401, "no_authorization", "This endpoint requires a valid Bearer token")
                )
                return
            status, payload = create_user(standin, body)
            if standin.drop_next_response:
                standin.drop_next_response = False
                self.close_connection = True
                self.connection.close()  # the user is committed; the answer is lost
                return
            self._send(status, payload)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

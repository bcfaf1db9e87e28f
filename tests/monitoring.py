"""Helpers shared by the observability tests: signups whose statistics are flushed, a real local
HTTP receiver for webhooks, free ports."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conftest import TestDB

from profileguard.config import AlertSettings, Settings
from profileguard.install import upgrade

BAD_NAME = "Bad User"
CONSTRAINT = "pg_test_monitor_no_bad_user"


def with_alerts(settings: Settings, **changes: Any) -> Settings:
    """`settings` with these [alerts] values (the thresholds among them are not installed)."""
    return replace(settings, alerts=replace(AlertSettings(), **changes))


def configure_alerts(db: TestDB, **changes: Any) -> Settings:
    """`db.settings` with these [alerts] values, installed: `profileguard upgrade` stores the
    thresholds that profileguard.health() judges by."""
    settings = with_alerts(db.settings, **changes)
    upgrade(settings)
    return settings


def add_bad_constraint(db: TestDB) -> None:
    """Profiles named BAD_NAME now violate a CHECK constraint (category 'constraint')."""
    with db.connect() as conn:
        conn.execute(
            f"alter table public.profiles add constraint {CONSTRAINT}"
            f" check (full_name is distinct from '{BAD_NAME}') not valid"
        )


def signups(db: TestDB, count: int, *, name: str = "Good User") -> list[uuid.UUID]:
    """`count` signups on one connection, then flush its statistics so that the identity
    table's insert counter (which stats() reads) includes them before this returns."""
    ids = []
    with db.connect() as conn:
        for _ in range(count):
            ids.append(db.signup({"full_name": name}, conn=conn))
        flush_stats(conn)
    return ids


def bulk(db: TestDB, count: int, *, prefix: str = "bulk") -> None:
    """`count` users in one statement (the trigger creates their profiles), statistics flushed."""
    with db.connect() as conn:
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " select gen_random_uuid(), 'authenticated', 'authenticated',"
            " %(p)s || g || '@example.com', jsonb_build_object('full_name', 'User ' || g), now()"
            " from generate_series(1, %(n)s) g",
            {"p": prefix, "n": count},
        )
        flush_stats(conn)


def flush_stats(conn: Any) -> None:
    """Make this backend publish its pending statistics: pg_stat_force_next_flush() asks for a
    flush when the backend next goes idle, which happens before it reads the next query."""
    conn.execute("select pg_stat_force_next_flush()")
    conn.execute("select 1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """A real HTTP server on 127.0.0.1 that records JSON POST bodies; it can answer 500 to the
    first `fail_first` requests."""

    def __init__(self, fail_first: int = 0):
        self.messages: list[dict[str, Any]] = []
        self.requests = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests += 1
                    failing = receiver.requests <= receiver.fail_first
                    if not failing:
                        receiver.messages.append(json.loads(body))
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def of(self, rule: str, status: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                m
                for m in self.messages
                if m["profileguard"]["rule"] == rule
                and (status is None or m["profileguard"]["status"] == status)
            ]


@contextmanager
def receiver(fail_first: int = 0) -> Iterator[Receiver]:
    r = Receiver(fail_first)
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()

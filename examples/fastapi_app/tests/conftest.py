"""A real PostgreSQL for the example: the embedded server, or the one PROFILEGUARD_TEST_DSN names.

One scratch database for the session, holding the Supabase-shaped auth schema (the fixture the
library's own tests use) with profileguard installed and public.profiles created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from profileguard import sql as sqlfiles
from profileguard.config import Settings, load_settings
from profileguard.embedded import EmbeddedPostgres
from profileguard.install import install


@pytest.fixture(scope="session")
def example_settings() -> Iterator[Settings]:
    """Settings pointing at a fresh database with profileguard installed."""
    with contextlib.ExitStack() as stack:
        server = (
            os.environ.get("PROFILEGUARD_TEST_DSN") or stack.enter_context(EmbeddedPostgres()).uri()
        )
        name = f"pg_fastapi_example_{os.getpid()}"
        drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(drop)
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        url = make_conninfo(server, dbname=name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
        settings = load_settings(env={}, database_url=url)
        install(settings, create_profile_table=True)
        try:
            yield settings
        finally:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(drop)

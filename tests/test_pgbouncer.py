"""The PgBouncer helper: queries reach the server under test through a transaction pooler."""

from __future__ import annotations

import psycopg
from conftest import TestDB
from pgbouncer import pgbouncer
from psycopg.conninfo import make_conninfo


def test_queries_go_through_a_transaction_pooler(db: TestDB) -> None:
    dbname = db.scalar("select current_database()")
    with pgbouncer(db, pool_size=1) as bouncer:
        with (
            psycopg.connect(bouncer.url, autocommit=True, prepare_threshold=None) as one,
            psycopg.connect(bouncer.url, autocommit=True, prepare_threshold=None) as two,
        ):
            first = one.execute("select current_database(), pg_backend_pid()").fetchone()
            second = two.execute("select current_database(), pg_backend_pid()").fetchone()
            # Two open clients, one server connection: only transaction pooling allows that.
            assert first is not None and first[0] == dbname
            assert second == first
            assert one.execute("select count(*) from auth.users").fetchone() == (0,)
        # The admin console speaks the simple query protocol only: a ClientCursor uses it.
        with psycopg.connect(
            make_conninfo(bouncer.url, dbname="pgbouncer"),
            autocommit=True,
            prepare_threshold=None,
            cursor_factory=psycopg.ClientCursor,
        ) as admin:
            modes = {row[0]: row[1] for row in admin.execute("show config").fetchall()}
            assert modes["pool_mode"] == "transaction"

"""The SQL install generates for the default configuration, kept in tests/golden/ for review.

A reviewer reads the trigger's real INSERT there; a change to the generated SQL shows up as a diff
of that file. One file per PostgreSQL major version (the collations it uses differ); `make golden`
rewrites them.
"""

from __future__ import annotations

import os
from pathlib import Path

from conftest import TestDB

from profileguard.install import render_generated
from profileguard.mapping import build_plan

GOLDEN = Path(__file__).parent / "golden"
HEADER = (
    "-- The functions and trigger `profileguard install --create-profile-table` generates for the\n"
    "-- default configuration on Supabase's auth.users. Rewritten by `make golden`; checked by\n"
    "-- tests/test_golden.py.\n\n"
)


def test_generated_sql_matches_the_golden_file(installed: TestDB) -> None:
    with installed.connect() as conn:
        rendered = HEADER + render_generated(build_plan(conn, installed.settings)).as_string(conn)
        major = conn.info.server_version // 10000
    golden = GOLDEN / f"generated_default.pg{major}.sql"
    if os.environ.get("PROFILEGUARD_UPDATE_GOLDEN"):
        golden.write_text(rendered, encoding="utf-8")
    assert golden.exists(), f"no {golden.name}: run `make golden` (with the server running)"
    assert golden.read_text(encoding="utf-8") == rendered, (
        f"{golden} is out of date: review the change, then run `make golden`"
    )


SYNC_GOLDEN = Path(__file__).parent / "golden" / "sync_default.sql"
SYNC_HEADER = (
    "-- The UPDATE triggers, sync and drift functions install generates for the default\n"
    "-- configuration (username never, other columns fill_empty, mapped columns but the username\n"
    "-- redacted on soft delete). Rewritten by `make golden`; checked by tests/test_golden.py.\n\n"
)


def test_generated_sync_sql_matches_the_golden_file(installed: TestDB) -> None:
    from profileguard.install import render_sync

    with installed.connect() as conn:
        rendered = SYNC_HEADER + render_sync(build_plan(conn, installed.settings)).as_string(conn)
    if os.environ.get("PROFILEGUARD_UPDATE_GOLDEN"):
        SYNC_GOLDEN.write_text(rendered, encoding="utf-8")
    assert SYNC_GOLDEN.read_text(encoding="utf-8") == rendered, (
        f"{SYNC_GOLDEN} is out of date: review the change, then run `make golden`"
    )

"""Failure messages: stored without row values, served reduced to names, full only on request."""

from __future__ import annotations

from conftest import TestDB

from profileguard import observe
from profileguard.install import install
from profileguard.redaction import redact_row


def _failing_install(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "create table public.profiles (id uuid primary key references auth.users (id),"
            " full_name text check (full_name <> 'Grace Hopper'), username text)"
        )
    install(db.settings)


def test_stored_failure_keeps_no_row_values(db: TestDB) -> None:
    _failing_install(db)
    db.signup({"full_name": "Grace Hopper", "user_name": "grace"}, email="grace@example.com")
    with db.connect() as conn:
        rows = conn.execute(
            "select sqlstate, message, detail::text from profileguard.events where kind = 'failure'"
        ).fetchall()
    assert [r[0] for r in rows] == ["23514"]
    stored = " ".join(str(v) for v in rows[0])
    assert "Grace Hopper" not in stored and "grace" not in stored
    assert "profiles_full_name_check" in stored  # the name of what to fix stays


def test_redact_error_in_sql(installed: TestDB) -> None:
    cases = {
        "Failing row contains (1, Grace Hopper, x)": "Failing row contains (redacted)",
        "Key (lower(username))=(bob) already exists.": "Key (lower(username))=(redacted) "
        "already exists.",
        'invalid input syntax for type uuid: "xyz"': "invalid input syntax for type uuid: "
        '"(redacted)"',
        'duplicate key value violates unique constraint "p_key"': "duplicate key value violates"
        ' unique constraint "p_key"',
    }
    for given, expected in cases.items():
        assert installed.scalar("select profileguard.redact_error(%s)", (given,)) == expected


def test_repair_state_message_redacted(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute(
            "select profileguard.note_repair_failure('u1', '23514', %s, 'test', 5, 1, 1)",
            ('new row violates check constraint "c"\nFailing row contains (u1, Ada L)',),
        )
        last, history = conn.execute(
            "select last_message, history::text from profileguard.repair_state"
        ).fetchone()
    assert "Ada L" not in last and "Ada L" not in history


def test_api_rows_show_names_only_unless_asked(db: TestDB) -> None:
    _failing_install(db)
    db.signup({"full_name": "Grace Hopper"})
    with db.connect() as conn:
        items = observe.events(conn, kind="failure")["items"]
    shown = redact_row(items[0])
    assert shown["redacted"] is True
    assert shown["constraint_name"] == "profiles_full_name_check"
    assert "23514" in shown["message"] and "Failing row" not in str(shown)
    assert redact_row({"kind": "config", "message": "install"})["message"] == "install"

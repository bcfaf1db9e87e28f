"""Failure messages: stored with their error's fields and without values, served reduced to names,
full only on request."""

from __future__ import annotations

import json
import string
import uuid
from dataclasses import replace
from typing import Any

import psycopg
from conftest import TestDB
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from profileguard import observe
from profileguard.config import parse_mapping
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


def test_values_are_stripped_whatever_the_shape_and_names_kept(installed: TestDB) -> None:
    names = ["full_name", "lower(username)", "profiles", "p_key", "c"]
    cases = {
        # The shapes: another user's value in an exclusion constraint's detail, a number,
        # an email in a JSON token.
        "Key (full_name)=(Ada) conflicts with existing key (full_name)=(Legit 3).": "Key "
        "(full_name)=(…) conflicts with existing key (full_name)=(…).",
        'value "99999999999" is out of range for type integer': 'value "…" is out of range for'
        " type integer",
        'Token "ada@example.com" is invalid.': 'Token "…" is invalid.',
        "Failing row contains (1, Grace (G) Hopper :), x).": "Failing row contains (…).",
        "Key (lower(username))=(bob) already exists.": "Key (lower(username))=(…) already exists.",
        'invalid input syntax for type uuid: "x"y"z"': 'invalid input syntax for type uuid: "…"',
        'new row for relation "profiles" violates check constraint "c"': "new row for relation"
        ' "profiles" violates check constraint "c"',
        "value too long for type character varying(20)": "value too long for type character"
        " varying(20)",
        # A value that holds a name keeps only the name; a value after a name whose closing
        # parenthesis comes first is taken back to that name.
        'invalid input syntax for type integer: "a "profiles" b"': "invalid input syntax for type"
        ' integer: "…"profiles"…"',
        "Key (full_name)=(full_name) secret) already exists.": "Key (full_name)=(full_name)…)"
        " already exists.",
        "can't create the profile for 'Ann'": "can't create the profile for '…'",
        'duplicate key value violates unique constraint "p_key"': "duplicate key value violates"
        ' unique constraint "p_key"',
    }
    for given_text, expected in cases.items():
        stripped = installed.scalar("select profileguard.strip_values(%s, %s)", (given_text, names))
        assert stripped == expected, given_text


def test_redact_error_keeps_the_names_of_the_error_and_of_the_profile_table(
    installed: TestDB,
) -> None:
    message = 'new row for relation "audit_log" violates check constraint "audit_ok"'
    # Unknown names are values: from the first quote to the last, nothing is kept.
    assert installed.scalar("select profileguard.redact_error(%s)", (message,)) == (
        'new row for relation "…"'
    )
    fields = {"schema_name": "public", "table_name": "audit_log", "constraint_name": "audit_ok"}
    assert (
        installed.scalar("select profileguard.redact_error(%s, %s)", (message, json.dumps(fields)))
        == message
    )
    # Without fields, the profile table's own names: its columns, constraints and key lists.
    assert installed.scalar(
        "select profileguard.redact_error(%s)", ("Key (username)=(grace) already exists.",)
    ) == ("Key (username)=(…) already exists.")


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
    assert shown["table_name"] == "profiles" and shown["schema_name"] == "public"
    assert "23514" in shown["message"] and "Failing row" not in str(shown)
    assert redact_row({"kind": "config", "message": "install"})["message"] == "install"


# --- PostgreSQL's own message forms, filled with generated values --------------------------------

# (SQLSTATE, message, detail) as PostgreSQL writes them (errmsg/errdetail of nbtinsert.c,
# execIndexing.c, execMain.c, execPartition.c, tablecmds.c, ri_triggers.c, domains.c, numutils.c,
# int8.c, float.c, varchar.c, enum.c, datetime.c, arrayfuncs.c, rowtypes.c, jsonfuncs.c/jsonapi.c,
# encode.c, varbit.c), with {table}, {column}, {constraint}, {type} for the names of what failed
# and {value}, {other}, {row} for data.
FORMS: list[tuple[str, str, str | None]] = [
    ("23505", 'duplicate key value violates unique constraint "{constraint}"',
     "Key ({column})=({value}) already exists."),
    ("23505", 'could not create unique index "{constraint}"',
     "Key ({column})=({value}) is duplicated."),
    ("23P01", 'conflicting key value violates exclusion constraint "{constraint}"',
     "Key ({column})=({value}) conflicts with existing key ({column})=({other})."),
    ("23P01", 'could not create exclusion constraint "{constraint}"',
     "Key ({column})=({value}) conflicts with key ({column})=({other})."),
    ("23502", 'null value in column "{column}" of relation "{table}" violates not-null constraint',
     "Failing row contains {row}."),
    ("23502", 'null value in column "{column}" violates not-null constraint',
     "Failing row contains {row}."),
    ("23514", 'new row for relation "{table}" violates check constraint "{constraint}"',
     "Failing row contains {row}."),
    ("23514", 'new row for relation "{table}" violates check constraint "{constraint}"',
     "Failing row contains ({column}) = {row}."),
    ("23514", 'new row for relation "{table}" violates partition constraint',
     "Failing row contains {row}."),
    ("23514", 'no partition of relation "{table}" found for row',
     "Partition key of the failing row contains ({column}) = ({value})."),
    ("23503", 'insert or update on table "{table}" violates foreign key constraint "{constraint}"',
     'Key ({column})=({value}) is not present in table "{table}".'),
    ("23503",
     'update or delete on table "{table}" violates foreign key constraint "{constraint}" on table'
     ' "{table}"', 'Key ({column})=({value}) is still referenced from table "{table}".'),
    ("23514", 'value for domain {type} violates check constraint "{constraint}"', None),
    ("22003", 'value "{value}" is out of range for type {type}', None),
    ("22003", '"{value}" is out of range for type double precision', None),
    ("22P02", 'invalid input syntax for type {type}: "{value}"', None),
    ("22P02", "invalid input syntax for type json", 'Token "{value}" is invalid.'),
    ("22P02", "invalid input syntax for type json", 'Expected ":", but found "{value}".'),
    ("22P02", "invalid input syntax for type json", 'Expected JSON value, but found "{value}".'),
    ("22P02", "invalid input syntax for type json", 'Expected "," or "}}", but found "{value}".'),
    ("22P02", "invalid input syntax for type json", 'Escape sequence "\\{value}" is invalid.'),
    ("22P02", 'invalid input value for enum {type}: "{value}"', None),
    ("22008", 'date/time field value out of range: "{value}"', None),
    ("22007", 'invalid input syntax for type timestamp with time zone: "{value}"', None),
    ("22P02", 'malformed array literal: "{value}"',
     'Array value must start with "{{" or dimension information.'),
    ("22P02", 'malformed record literal: "{value}"', "Missing left parenthesis."),
    ("22023", 'time zone "{value}" not recognized', None),
    ("22P02", 'invalid hexadecimal digit: "{value}"', None),
    ("22P02", '"{value}" is not a valid binary digit', None),
]  # fmt: skip

_LETTERS = string.ascii_letters + string.digits + "éüßøЖжλ名前"
NAMES = st.text(alphabet=_LETTERS + "_", min_size=3, max_size=24)
_ANY = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00…")
VALUES = st.one_of(
    st.emails(),
    st.from_regex(r"\+?[0-9]{1,3}[ (-]?[0-9]{3}[) -]?[0-9]{3}[ -]?[0-9]{4}", fullmatch=True),
    st.uuids().map(str),
    st.integers(min_value=10**9).map(str),
    # Names with the delimiters values bring along: quotes, parentheses, brackets, unicode.
    st.text(alphabet=_LETTERS + " '\"()[]{}.,:;=-\n«»„“", min_size=3, max_size=40),
    st.text(alphabet=_ANY, min_size=3, max_size=40),
).filter(lambda v: "…" not in v and "\x00" not in v and sum(c.isalnum() for c in v) >= 2)


def _stored(conn: psycopg.Connection, message: str, fields: dict[str, Any]) -> tuple[str, Any]:
    """Record a failure as a client does; what the audit trail keeps: its message and detail."""
    conn.execute(
        "select profileguard.record_failure(%s, '23505', %s, 'test', %s)",
        (str(uuid.uuid4()), message, json.dumps(fields)),
    )
    row = conn.execute(
        "select message, detail from profileguard.events order by id desc limit 1"
    ).fetchone()
    assert row is not None
    return str(row[0]), row[1]


NAME_ROLES = ("table", "column", "constraint")


@hsettings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    form=st.sampled_from(FORMS),
    names=st.lists(NAMES, min_size=3, max_size=3, unique=True),
    values=st.lists(VALUES, min_size=4, max_size=4),
    type_name=st.sampled_from(["integer", "smallint", "uuid", "json", "mood", "email_address"]),
)
def test_postgresql_message_forms_lose_their_values_and_keep_their_names(
    installed: TestDB,
    form: tuple[str, str, str | None],
    names: list[str],
    values: list[str],
    type_name: str,
) -> None:
    _sqlstate, message_form, detail_form = form
    named = dict(zip(NAME_ROLES, names, strict=True), type=type_name)

    def fill(form: str | None, value: str, other: str, row: str) -> str:
        return "" if form is None else form.format(**named, value=value, other=other, row=row)

    row = f"({values[2]}, {values[1]}, null, {values[3]})"
    message = fill(message_form, values[0], values[1], row)
    detail = fill(detail_form, values[0], values[1], row)
    # The text around the values and the names stored beside them: a value found in them (or a
    # name in a value) proves nothing.
    around = [fill(message_form, "…", "…", "(…)"), fill(detail_form, "…", "…", "(…)")]
    around += [*names, type_name, "public"]
    assume(not any(v in a or n in v for v in values for a in around for n in names))
    fields = {f"{role}_name": name for role, name in named.items() if role != "type"}
    fields |= {"schema_name": "public", "datatype_name": type_name, "detail": detail}

    with installed.connect() as conn:
        stored_message, stored_detail = _stored(conn, message, fields)

    stored = "\n".join([stored_message, *map(str, stored_detail.values())])
    for value in values:
        if value in message + detail:
            assert value not in stored, (message, detail, stored)
    for role, name in named.items():
        if "{" + role + "}" in message_form:
            assert name in stored_message, (message, stored_message)
    assert {k: stored_detail[k] for k in fields if k != "detail"} == {
        k: v for k, v in fields.items() if k != "detail"
    }


# --- real failures on the server, recorded by the sign-up trigger --------------------------------

PROFILE_TABLE = """
create table public.profiles (
    id uuid primary key references auth.users (id) on delete cascade,
    full_name text constraint full_name_short check (char_length(full_name) < 40),
    nickname text constraint profiles_nickname_key unique,
    display text,
    age smallint,
    prefs jsonb,
    handle text not null
)"""


def _real_install(db: TestDB) -> bool:
    """The profile table above with an exclusion constraint on display (a unique index where
    btree_gist is missing); True when it is an exclusion constraint."""
    with db.connect() as conn:
        gist = conn.execute(
            "select exists (select from pg_available_extensions where name = 'btree_gist')"
        ).fetchone()
        exclusion = bool(gist and gist[0])
        conn.execute(PROFILE_TABLE)
        if exclusion:
            conn.execute("create extension if not exists btree_gist")
            conn.execute(
                "alter table public.profiles add constraint display_once"
                " exclude using gist (display with =)"
            )
        else:
            conn.execute("create unique index display_once on public.profiles (display)")
    mapping = {
        column: [f"raw_user_meta_data.{column}"]
        for column in ("full_name", "nickname", "display", "age", "prefs", "handle")
    }
    settings = replace(
        db.settings,
        mapping=parse_mapping(mapping),
        mapping_is_default=False,
        username_column=None,
    )
    install(settings, force=True)
    return exclusion


def test_real_failures_keep_their_fields_and_none_of_the_users_values(db: TestDB) -> None:
    exclusion = _real_install(db)
    legit = {
        "full_name": "Legit (L) O'Neil",
        "nickname": 'Grace "G" Hopper',
        "display": "Ada Lovelace (ada@example.com)",
        "age": "36",
        "prefs": '{"theme": "dark"}',
        "handle": "legit-3",
    }
    first = db.signup(legit, email="legit@example.com")
    assert db.scalar("select count(*) from public.profiles where id = %s", (first,)) == 1

    def user(n: int, **changes: str) -> dict[str, str]:
        return {"handle": f"h-{n}", "display": f"Display {n} ☃", **changes}

    # case: (metadata, SQLSTATE, the fields PostgreSQL reports besides schema and table)
    cases: dict[str, tuple[dict[str, str], str, dict[str, str]]] = {
        # Another user's value in the detail of a unique and of an exclusion violation.
        "unique": (
            user(1, nickname='Grace "G" Hopper'),
            "23505",
            {"constraint_name": "profiles_nickname_key"},
        ),
        "exclusion": (
            user(2, display="Ada Lovelace (ada@example.com)"),
            "23P01" if exclusion else "23505",
            {"constraint_name": "display_once"},
        ),
        "check": (
            user(3, full_name="Zoë «Z» Ünal (zoe@example.org) +1 (555) 010-9999 xx"),
            "23514",
            {"constraint_name": "full_name_short"},
        ),
        "not_null": (
            {"display": "Nobody (no handle) +44 20 7946 0958"},
            "23502",
            {"column_name": "handle"},
        ),
        "out_of_range": (user(4, age="99999999999"), "22003", {}),
        "json_token": (user(5, prefs="ada@example.com"), "22P02", {}),
    }
    ids = {
        case: db.signup(meta, email=f"{case}@example.net") for case, (meta, _, _) in cases.items()
    }
    with db.connect() as conn:
        found = conn.execute(
            "select user_id, sqlstate, message, detail from profileguard.events"
            " where kind = 'failure'"
        ).fetchall()
    by_user = {row[0]: row[1:] for row in found}
    rows = {case: by_user[str(uid)] for case, uid in ids.items() if str(uid) in by_user}
    assert len(found) == len(cases) and set(rows) == set(cases)
    secrets = [v for meta in [legit] + [c[0] for c in cases.values()] for v in meta.values()]
    secrets += [f"{case}@example.net" for case in cases] + ["legit@example.com", "Ada Lovelace"]
    secrets = [v for v in secrets if len(v) > 3]
    for case, (_, sqlstate, fields) in cases.items():
        stored_state, message, detail = rows[case]
        assert stored_state == sqlstate, (case, message)
        stored = "\n".join([message, *map(str, (detail or {}).values())])
        for secret in secrets:
            assert secret.lower() not in stored.lower(), (case, secret, stored)
        if sqlstate.startswith("23"):
            assert detail["schema_name"] == "public" and detail["table_name"] == "profiles"
        for key, name in fields.items():
            assert detail[key] == name and name in message, (case, message, detail)
    # The names in the texts stay: the key a unique or exclusion detail names, the type.
    assert rows["unique"][2]["detail"] == "Key (nickname)=(…) already exists."
    assert rows["exclusion"][2]["detail"] == (
        "Key (display)=(…) conflicts with existing key (display)=(…)."
        if exclusion
        else "Key (display)=(…) already exists."
    )
    assert rows["check"][2]["detail"] == "Failing row contains (…)."
    assert rows["out_of_range"][1] == 'value "…" is out of range for type smallint'
    assert rows["json_token"][2]["detail"] == 'Token "…" is invalid.'

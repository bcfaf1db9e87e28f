"""The mapping as profileguard installs it: its constants folded into the plans that read them,
one full INSERT that every path but the sign-up trigger's first try calls, and a rendered file
(`profileguard sql` on the User Management Starter table) that holds each once, in lines a person
can read.

The plans are the ones the server really runs, printed by auto_explain (loaded by the superuser,
logged to the client as notices) while a sign-up fires the trigger and ensure_profile repairs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from conftest import TestDB
from test_cli import cli

from profileguard import sql as sqlfiles

# A reserved name and an unverified provider of the default policy, and a code point from the
# middle of the invisible characters' class: each is in the rendered SQL only as its function's
# value, and in the plan of every statement that reads it.
RESERVED = "hostmaster"
UNVERIFIED = "anonymous"
INVISIBLE = "\\x202e"
CONSTANT_FUNCTIONS = (
    "reserved_names",
    "unverified_providers",
    "invisible_characters",
    "edge_spaces",
    "rare_names",
    "combining_marks",
    "confusable_characters",
    "confusable_prototypes",
)
# The functions the statements call only for names that are not plain ASCII.
RARE_PATHS = {"username_base", "reserved_confusable"}


@contextmanager
def explained(db: TestDB) -> Iterator[tuple[psycopg.Connection, list[str]]]:
    """A superuser connection whose every statement, nested ones too, has its executed plan
    (verbose: each expression as the executor evaluates it) appended to the list."""
    plans: list[str] = []
    with db.connect_admin() as conn:
        conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        conn.execute("load 'auto_explain'")
        for name, value in (
            ("log_min_duration", "0"),
            ("log_nested_statements", "on"),
            ("log_verbose", "on"),
            ("log_level", "notice"),
        ):
            conn.execute(f"set auto_explain.{name} = {value}")
        yield conn, plans


def plan_of(plans: list[str], pattern: str) -> str:
    """The one plan that matches `pattern`, without the statement's text printed above it."""
    found = []
    for logged in plans:
        lines = logged.splitlines()
        start = next((i for i, line in enumerate(lines) if "(cost=" in line), len(lines))
        plan = "\n".join(lines[start:])
        if re.search(pattern, plan):
            found.append(plan)
    assert len(found) == 1, (pattern, plans)
    return found[0]


def test_the_signup_statements_hold_the_mapping_constants_folded(installed: TestDB) -> None:
    with explained(installed) as (conn, plans):
        plain = installed.signup({"user_name": "Folded"}, conn=conn)
    # A plain name: the lean insert alone, which cleans nothing. Folded at plan time: the
    # values are constants of the plan, no function is called.
    lean = plan_of(plans, r"Insert on public\.profiles")
    assert RESERVED in lean and UNVERIFIED in lean and INVISIBLE not in lean
    assert not any(f"{name}(" in lean for name in CONSTANT_FUNCTIONS)
    assert not re.findall(r"profileguard\.(\w+)\(", lean)
    # The trigger's own statement: it reads the transition table, calls nothing.
    assert "Named Tuplestore Scan" in lean and "Function Scan" not in lean
    with explained(installed) as (conn, plans):
        cleaned = installed.signup({"user_name": "F\u00f6lded\u200b"}, conn=conn)
    # A name to clean: the lean insert leaves it to the full one, which holds every constant.
    full = plan_of(plans, r"(?is)Insert on public\.profiles.*normalize")
    assert RESERVED in full and UNVERIFIED in full and INVISIBLE in full
    # No constant's function is called; the only calls are the username rule's rare paths,
    # behind their cheap tests.
    assert set(re.findall(r"profileguard\.(\w+)\(", full)) == RARE_PATHS
    assert "Named Tuplestore Scan" in full and "Function Scan" not in full
    names = "select username from public.profiles where id = %s"
    assert installed.scalar(names, (plain,)) == "Folded"
    assert installed.scalar(names, (cleaned,)) == "F\u00f6lded"


def test_repairs_call_the_one_full_statement_and_it_folds_the_constants(
    installed: TestDB,
) -> None:
    uid = installed.signup({"user_name": "Repaired"})
    installed.scalar("delete from public.profiles where id = %s returning id", (uid,))
    with explained(installed) as (conn, plans):
        conn.execute("select * from profileguard.ensure_profile(%s)", (uid,))
    # create_profiles calls insert_profiles (a set-returning plpgsql function: called, never
    # inlined) and records what it created ...
    plan_of(plans, r"Function Scan on profileguard\.insert_profiles")
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and user_id = %s",
            (str(uid),),
        )
        == 1
    )
    # ... whose statement reads the identity table by key, with the constants folded and the
    # retry's lookups behind its parameter.
    full = plan_of(plans, r"Insert on public\.profiles")
    assert "Index Scan using users_pkey on auth.users" in full
    assert "Named Tuplestore Scan" not in full
    assert RESERVED in full and UNVERIFIED in full and INVISIBLE in full
    assert not any(f"{name}(" in full for name in CONSTANT_FUNCTIONS)
    assert "ON CONFLICT" in full.upper() or "Conflict Resolution" in full
    assert installed.scalar("select username from public.profiles where id = %s", (uid,)) == (
        "Repaired"
    )


def test_sql_on_the_starter_table_holds_the_mapping_once_in_short_lines(db: TestDB) -> None:
    with db.connect_admin() as conn:
        conn.execute(sqlfiles.read("fixtures/demo_legacy.sql"))
    done = cli(db, "sql", "--replace-trigger", "on_auth_user_created")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    lines = text.splitlines()
    # Every line within 120 characters, the install's notes recorded as data too.
    assert max(len(line) for line in lines) <= 120, max(lines, key=len)
    functions = re.findall(
        r"^create (?:or replace )?function (\S+?)\(.*?^\$pg\$;$", text, re.M | re.S
    )
    bodies = re.findall(r"^create (?:or replace )?function .*?^\$pg\$;$", text, re.M | re.S)
    assert len(functions) == len(set(functions)), "a function defined twice"
    # The reserved names once among the functions: in reserved_names() alone. The settings row
    # and the install's config event hold them as data.
    holding = [body.split("(", 1)[0] for body in bodies if f"'{RESERVED}'" in body]
    assert holding == ["create or replace function profileguard.reserved_names"]
    assert text.count(RESERVED) == 3
    # One full INSERT of the mapping (insert_profiles) beside the trigger's first try.
    inserting = [body.split("(", 1)[0] for body in bodies if "INSERT INTO public.profiles" in body]
    assert sorted(inserting) == [
        "create or replace function profileguard.insert_profiles",
        "create or replace function profileguard.on_identity_insert",
    ]

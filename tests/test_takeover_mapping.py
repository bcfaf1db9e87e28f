"""The takeover keeps what the app did: the mapping is learned from the legacy trigger's function
(read with PostgreSQL's own parser), rehearsed side by side before, kept by later installs, and
audit reports a mapping that differs from it."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import psycopg
import pytest
from conftest import TestDB
from test_cli import cli

from profileguard.audit.run import run_audit
from profileguard.config import TableRef
from profileguard.mapping import legacy
from profileguard.repair import Worker

# Supabase's User Management Starter table, and its handle_new_user() as apps commonly edit it:
# the username the app sent in signUp(options.data) is copied as it is.
STARTER = """
create table public.profiles (
    id uuid not null references auth.users on delete cascade primary key,
    updated_at timestamptz,
    username text unique,
    full_name text,
    avatar_url text,
    website text,
    constraint username_length check (char_length(username) >= 3)
);
alter table public.profiles enable row level security;
create policy "Public profiles are viewable by everyone." on public.profiles
    for select using (true);
create function public.handle_new_user()
returns trigger
language plpgsql
security definer set search_path = ''
as $$
begin
    insert into public.profiles (id, full_name, avatar_url, username)
    values (new.id, new.raw_user_meta_data ->> 'full_name', new.raw_user_meta_data ->> 'avatar_url',
            new.raw_user_meta_data ->> 'username');
    return new;
end;
$$;
create trigger on_auth_user_created
    after insert on auth.users
    for each row execute procedure public.handle_new_user();
"""
DYNAMIC = """
create table public.profiles (
    id uuid not null references auth.users on delete cascade primary key,
    username text unique
);
create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
    execute pg_catalog.format('insert into %I.%I (id, username) values ($1, $2)',
                              'public', 'profiles')
        using new.id, new.raw_user_meta_data ->> 'username';
    return new;
end;
$$;
create trigger on_auth_user_created
    after insert on auth.users
    for each row execute procedure public.handle_new_user();
"""


def signup_as_auth(db: TestDB, meta: dict[str, object]) -> uuid.UUID | None:
    """One sign-up as Supabase Auth makes it (its role, search_path auth, one transaction:
    insert, then update the role); None when it failed."""
    uid = uuid.uuid4()
    with db.connect_admin() as conn:
        conn.execute("set role supabase_auth_admin")
        conn.execute("set search_path = auth")
        try:
            with conn.transaction():
                conn.execute(
                    "insert into users (id, aud, role, email, raw_user_meta_data,"
                    " raw_app_meta_data) values (%s, 'authenticated', '', %s, %s, %s)",
                    (
                        uid,
                        f"{uid}@example.com",
                        json.dumps(meta),
                        json.dumps({"provider": "email", "providers": ["email"]}),
                    ),
                )
                conn.execute("update users set role = 'authenticated' where id = %s", (uid,))
        except psycopg.Error:
            return None
    return uid


def username(db: TestDB, uid: uuid.UUID) -> str | None:
    value = db.scalar("select username from public.profiles where id = %s", (uid,))
    return None if value is None else str(value)


def comparison(output: str, column: str) -> tuple[int, int]:
    """(differ, compared) of `column` in install --check's side-by-side lines."""
    found = re.search(rf"^\s+{column}: (\d+) of (\d+) differ$", output, re.MULTILINE)
    assert found, output
    return int(found[1]), int(found[2])


def test_the_takeover_keeps_the_usernames_the_app_sent(db: TestDB, tmp_path: Path) -> None:
    with db.connect() as conn:
        conn.execute(STARTER)
    before = {f"member_{n}": signup_as_auth(db, {"username": f"member_{n}"}) for n in range(12)}
    before["jo_legacy"] = signup_as_auth(db, {"username": "jo_legacy", "full_name": "Jo"})
    assert all(before.values())
    assert {name: username(db, uid) for name, uid in before.items() if uid} == {
        name: name for name in before
    }
    assert signup_as_auth(db, {"username": "member_1"}) is None  # taken: the legacy one fails

    # The rehearsal, before anything changes: side by side with the legacy function.
    checked = cli(db, "install", "--check", "--replace-trigger", "on_auth_user_created")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "side by side with the legacy trigger on_auth_user_created:" in checked.stdout
    differ, compared = comparison(checked.stdout, "username")
    assert (differ, compared > len(before)) == (0, True)
    assert comparison(checked.stdout, "full_name")[0] == 0
    # A mapping written in the file wins, and the comparison shows what it would change.
    written = tmp_path / "profileguard.toml"
    written.write_text('[profile]\npreset = "default"\n')
    env = {"PROFILEGUARD_CONFIG": str(written)}
    other = cli(db, "install", "--check", "--replace-trigger", "on_auth_user_created", env=env)
    assert other.returncode == 0, other.stdout + other.stderr
    differ, compared = comparison(other.stdout, "username")
    assert differ >= len(before) and compared > len(before)

    taken = cli(db, "install", "--replace-trigger", "on_auth_user_created", "--json")
    assert taken.returncode == 0, taken.stderr
    notes = json.loads(taken.stdout)["notes"]
    assert any("learned from trigger on_auth_user_created" in note for note in notes), notes
    assert "mapping: username = raw_user_meta_data.username" in notes
    learned = db.scalar("select learned_mapping from profileguard.replaced_triggers")
    assert learned["mapping"]["username"] == ["raw_user_meta_data.username"]

    after = {f"member_{n}": signup_as_auth(db, {"username": f"member_{n}"}) for n in range(20, 60)}
    after["Ada Lovelace"] = signup_as_auth(db, {"username": "Ada Lovelace", "full_name": "Ada"})
    assert all(after.values())
    got = {name: username(db, uid) for name, uid in after.items() if uid}
    assert got == {name: name for name in after}  # every valid, free name, exactly
    assert db.scalar(
        "select full_name from public.profiles where id = %s", (after["Ada Lovelace"],)
    )
    # Where the legacy function failed the sign-up, profileguard fails none.
    taken_name = signup_as_auth(db, {"username": "member_1"})
    too_short = signup_as_auth(db, {"username": "jo"})
    reserved = signup_as_auth(db, {"username": "admin"})
    assert taken_name and too_short and reserved
    assert username(db, taken_name) not in (None, "member_1")
    assert username(db, too_short) is None or len(str(username(db, too_short))) >= 3
    assert username(db, reserved) != "admin"
    assert db.scalar("select count(*) from profileguard.failures") == 0

    # Installing again, the rendered migration and audit all use the learned mapping.
    again = cli(db, "install", "--json")
    assert again.returncode == 0, again.stderr
    rendered = cli(db, "sql")  # the same mapping: nothing to change
    assert rendered.returncode == 0, rendered.stderr
    assert "with this configuration: nothing would change" in rendered.stderr
    later = signup_as_auth(db, {"username": "after_reinstall"})
    assert later and username(db, later) == "after_reinstall"
    report = run_audit(db.settings)
    assert "legacy_mapping_differs" not in report.codes()
    # The worker judges the installed mapping with the same settings: the learned ones.
    assert Worker(db.settings).heal()["mapping"] == "current"

    # A mapping written in the file wins over the learned one; audit says what it changes.
    changed = cli(db, "install", env=env)
    assert changed.returncode == 0, changed.stderr
    report = run_audit(db.settings)
    found = [f for f in report.findings if f.code == "legacy_mapping_differs"]
    assert found and "username" in found[0].evidence["columns"]
    assert found[0].evidence["columns"]["username"]["legacy"] == ["raw_user_meta_data.username"]
    plain = signup_as_auth(db, {"username": "member_99"})
    assert plain and username(db, plain) != "member_99"

    # Taken over by an earlier version (nothing recorded): without the file's mapping, the next
    # install learns it again from the saved function.
    with db.connect_admin() as conn:
        conn.execute("update profileguard.replaced_triggers set learned_mapping = null")
    assert cli(db, "install").returncode == 0
    earlier = signup_as_auth(db, {"username": "taken_over_before"})
    assert earlier and username(db, earlier) == "taken_over_before"


def test_a_legacy_function_with_dynamic_sql_is_not_guessed(db: TestDB, tmp_path: Path) -> None:
    with db.connect() as conn:
        conn.execute(DYNAMIC)
    for args in (("install", "--check"), ("install",), ("sql",)):
        refused = cli(db, *args, "--replace-trigger", "on_auth_user_created")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "could not learn what trigger on_auth_user_created" in refused.stderr
        assert "dynamic SQL (EXECUTE)" in refused.stderr
        assert "[mapping]" in refused.stderr  # the fix: write the mapping
    assert db.scalar("select to_regnamespace('profileguard')") is None
    # With the mapping written out, install proceeds with exactly that.
    written = tmp_path / "profileguard.toml"
    written.write_text(
        '[mapping]\nusername = ["raw_user_meta_data.username"]\n[username]\nunverified = "plain"\n'
    )
    env = {"PROFILEGUARD_CONFIG": str(written)}
    taken = cli(db, "install", "--replace-trigger", "on_auth_user_created", env=env)
    assert taken.returncode == 0, taken.stderr
    uid = signup_as_auth(db, {"username": "written_out"})
    assert uid and username(db, uid) == "written_out"
    report = run_audit(db.settings)
    assert "legacy_mapping_unlearned" in report.codes()


def definition(body: str) -> str:
    return (
        "CREATE OR REPLACE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql\n"
        f"AS $function$\n{body}\n$function$\n"
    )


@pytest.mark.parametrize(
    ("body", "mapping", "unlearned"),
    [
        (
            "begin insert into profiles (id, username, full_name) select new.id,"
            " coalesce(new.raw_user_meta_data->>'username', new.raw_user_meta_data->>'user_name'),"
            " new.raw_user_meta_data #>> '{custom_claims,global_name}';"
            " return new; end;",
            {
                "username": ("raw_user_meta_data.username", "raw_user_meta_data.user_name"),
                "full_name": ("raw_user_meta_data.custom_claims.global_name",),
            },
            (),
        ),
        (
            "begin if new.email is null then raise exception 'no email'; end if;"
            " insert into public.profiles (id, username) values (new.id, split_part(new.email,"
            " '@', 1)) on conflict (id) do nothing; return new; end;",
            {"username": ("email|localpart",)},
            (),
        ),
        (
            "begin insert into public.profiles (id, username, updated_at) values (new.id,"
            " new.raw_user_meta_data->'username', now()); return new; end;",
            {},
            ("username = ", "updated_at = now()"),
        ),
        (
            "begin if new.email like '%@corp.com' then insert into public.profiles (id) values"
            " (new.id); end if; return new; end;",
            {},
            ("a branch (IF/CASE)", "no INSERT into public.profiles"),
        ),
        (
            "begin insert into public.profiles (id) values (new.id);"
            " insert into public.user_roles (id) values (new.id); return new; end;",
            {},
            ("it also writes public.user_roles",),
        ),
    ],
)
def test_what_a_legacy_function_fills_is_read_with_postgresqls_parser(
    body: str, mapping: dict[str, tuple[str, ...]], unlearned: tuple[str, ...]
) -> None:
    found = legacy.learn(
        definition(body),
        trigger="on_auth_user_created",
        function="public.handle_new_user()",
        profile=TableRef("public", "profiles", "id"),
        identity_key="id",
    )
    assert dict(found.mapping) == mapping
    for text in unlearned:
        assert any(text in item for item in found.unlearned), found.unlearned
    assert found.complete == (not unlearned)

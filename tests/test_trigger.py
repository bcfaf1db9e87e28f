"""The statement-level trigger: profiles on signup, failures recorded, signups never blocked."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import psycopg
import pytest
from conftest import key_hash
from psycopg.conninfo import make_conninfo

from profileguard.config import parse_mapping
from profileguard.install import install, set_enabled

REJECT_ALL = "alter table public.profiles add constraint reject_all check (false) not valid"


def execute(db, query: str, params=None) -> None:
    with db.connect() as conn:
        conn.execute(query, params)


def profile_of(db, uid):
    return db.scalar("select to_jsonb(p) from public.profiles p where p.id = %s", (uid,))


def failures(db) -> list[tuple]:
    with db.connect() as conn:
        return conn.execute(
            "select user_id, sqlstate, category, source, message from profileguard.failures"
            " order by id"
        ).fetchall()


def test_signup_creates_mapped_profile(installed):
    uid = installed.signup(
        {"full_name": "Ada Lovelace", "avatar_url": "https://x.test/a.png", "user_name": "ada"},
        email="ada@example.com",
    )
    profile = profile_of(installed, uid)
    assert profile["full_name"] == "Ada Lovelace"
    assert profile["avatar_url"] == "https://x.test/a.png"
    assert profile["username"] == "ada"
    assert installed.scalar("select role from auth.users where id = %s", (uid,)) == "authenticated"
    assert failures(installed) == []
    # Successful signups leave no audit rows.
    assert (
        installed.scalar("select count(*) from profileguard.events where user_id is not null") == 0
    )


def test_mapping_fallback_sources(installed):
    # OAuth-style metadata: name/picture/preferred_username instead of the first choices.
    oauth = installed.signup(
        {"name": "Grace Hopper", "picture": "https://x.test/g.png", "preferred_username": "grace"},
        email="ghopper@example.com",
    )
    discord = installed.signup(
        {"custom_claims": {"global_name": "Linus"}}, email="linus@example.com"
    )
    blank = installed.signup(
        {"full_name": "   ", "name": "Fallback Name", "user_name": "b"}, email="b@example.com"
    )
    p = profile_of(installed, oauth)
    assert (p["full_name"], p["avatar_url"], p["username"]) == (
        "Grace Hopper",
        "https://x.test/g.png",
        "grace",
    )
    p = profile_of(installed, discord)
    # No handle: no username (nothing is made from the email address).
    assert (p["full_name"], p["avatar_url"], p["username"]) == ("Linus", None, None)
    # Blank values are skipped; 'b' is too short for the check constraint and gets the suffix.
    p = profile_of(installed, blank)
    assert p["full_name"] == "Fallback Name"
    assert p["username"] == f"b_{key_hash(blank)}"


def test_signup_as_supabase_auth_admin(installed):
    uid = uuid.uuid4()
    url = make_conninfo(installed.url, user="supabase_auth_admin")
    with psycopg.connect(url) as conn:  # one transaction, committed on exit
        assert conn.execute("select current_user").fetchone()[0] == "supabase_auth_admin"
        conn.execute("set search_path = auth")
        conn.execute(
            "insert into users (instance_id, id, aud, role, email, raw_user_meta_data,"
            " raw_app_meta_data, created_at, updated_at)"
            " values ('00000000-0000-0000-0000-000000000000', %s, 'authenticated', '', %s,"
            ' %s, \'{"provider": "email"}\', now(), now())',
            (uid, "admin.made@example.com", json.dumps({"full_name": "Auth Admin Made"})),
        )
        conn.execute("update users set role = 'authenticated' where id = %s", (uid,))
        conn.execute(
            "insert into identities (provider_id, user_id, identity_data, provider, created_at)"
            " values (%s, %s, %s, 'email', now())",
            (str(uid), uid, json.dumps({"sub": str(uid), "email": "admin.made@example.com"})),
        )
    assert installed.scalar("select count(*) from auth.identities where user_id = %s", (uid,)) == 1
    profile = profile_of(installed, uid)
    assert profile["full_name"] == "Auth Admin Made"
    assert profile["username"] is None  # an email sign-up: nothing made from the address
    assert failures(installed) == []


def test_failing_profile_insert_never_blocks_1000_signups(installed):
    execute(installed, REJECT_ALL)
    ids = []
    with installed.connect() as conn:  # autocommit: every signup is its own transaction
        for i in range(1000):
            ids.append(installed.signup({"user_name": f"reject{i}"}, conn=conn))
    assert installed.scalar("select count(*) from auth.users") == 1000
    assert installed.scalar("select count(*) from public.profiles") == 0
    rows = failures(installed)
    assert len(rows) == 1000
    assert sorted(r[0] for r in rows) == sorted(str(i) for i in ids)
    assert {(r[1], r[2], r[3]) for r in rows} == {("23514", "constraint", "trigger")}
    assert all("reject_all" in r[4] for r in rows)


def test_strict_mode_rejects_signup(installed):
    install(installed.settings, strict=True)
    execute(installed, REJECT_ALL)
    uid = uuid.uuid4()
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        installed.signup({"full_name": "Strict"}, user_id=uid)
    assert info.value.sqlstate == "23514"
    assert "strict mode" in (info.value.diag.message_hint or "")
    assert installed.scalar("select count(*) from auth.users where id = %s", (uid,)) == 0
    assert failures(installed) == []
    # Turning strict off again lets the same signup commit, with the failure recorded.
    install(installed.settings, strict=False)
    installed.signup({"full_name": "Lenient"}, user_id=uid)
    assert installed.scalar("select count(*) from auth.users where id = %s", (uid,)) == 1
    assert [(r[0], r[1]) for r in failures(installed)] == [(str(uid), "23514")]


def test_bulk_insert_of_10k_users_in_one_statement(installed):
    installed.bulk_signup(10_000, handles=True)
    assert installed.scalar("select count(*) from auth.users") == 10_000
    assert installed.scalar("select count(*) from public.profiles") == 10_000
    assert (
        installed.scalar(
            "select count(*) from auth.users u left join public.profiles p using (id)"
            " where p.id is null"
        )
        == 0
    )
    assert installed.scalar("select count(distinct username) from public.profiles") == 10_000
    assert (
        installed.scalar(
            "select count(*) from auth.users u join public.profiles p using (id)"
            " where p.full_name = u.raw_user_meta_data ->> 'full_name'"
            " and p.username = u.raw_user_meta_data ->> 'user_name'"
        )
        == 10_000
    )
    assert failures(installed) == []


def test_mapping_without_a_username_rule_copies_each_value(db):
    # No collision-safe username column: the mapped values are copied as they are (one select,
    # no username rule), and a taken name is a recorded failure that lets the signup commit.
    settings = replace(
        db.settings,
        mapping=parse_mapping(
            {
                "full_name": ["raw_user_meta_data.full_name"],
                "avatar_url": ["raw_user_meta_data.avatar_url"],
                "username": ["raw_user_meta_data.user_name"],
            }
        ),
        mapping_is_default=False,
        username_column=None,
    )
    install(settings, create_profile_table=True)
    body = db.scalar(
        "select prosrc from pg_proc where oid = 'profileguard.on_identity_insert()'::regprocedure"
    )
    assert "pg_new_users" in body and "offset 0" not in body
    uid = db.signup(
        {"full_name": " Ada ", "user_name": "ada", "avatar_url": ""}, email="ada@example.com"
    )
    profile = profile_of(db, uid)
    assert [profile[c] for c in ("full_name", "avatar_url", "username")] == ["Ada", None, "ada"]
    db.bulk_signup(3)
    assert db.scalar("select count(*) from public.profiles where username is null") == 3
    taken = db.signup({"user_name": "ada"}, email="ada2@example.com")
    assert db.scalar("select count(*) from auth.users where id = %s", (taken,)) == 1
    assert profile_of(db, taken) is None
    assert [(r[0], r[1]) for r in failures(db)] == [(str(taken), "23505")]


def test_failing_bulk_insert_commits_and_records_each_user(installed):
    execute(installed, REJECT_ALL)
    installed.bulk_signup(250)
    assert installed.scalar("select count(*) from auth.users") == 250
    assert installed.scalar("select count(*) from public.profiles") == 0
    rows = failures(installed)
    assert len(rows) == 250
    assert {(r[1], r[2]) for r in rows} == {("23514", "constraint")}
    assert (
        installed.scalar(
            "select count(*) from auth.users u"
            " where (select count(*) from profileguard.failures f where f.user_id = u.id::text) = 1"
        )
        == 250
    )


def test_failure_sends_notification(installed):
    execute(installed, REJECT_ALL)
    with installed.connect() as listener:
        listener.execute("listen profileguard")
        uid = installed.signup({"full_name": "Noisy"})
        notes = list(listener.notifies(timeout=30, stop_after=1))
    assert len(notes) == 1
    assert notes[0].channel == "profileguard"
    payload = json.loads(notes[0].payload)
    assert payload == {
        "event": "failure",
        "source": "trigger",
        "count": 1,
        "sqlstate": "23514",
    }
    assert [r[0] for r in failures(installed)] == [str(uid)]


def test_no_notification_on_success(installed):
    with installed.connect() as listener:
        listener.execute("listen profileguard")
        installed.signup({"full_name": "Quiet"})
        # A marker sent after the signup committed: if the signup had notified, it came first.
        installed.scalar("select pg_notify('profileguard', 'marker')")
        notes = list(listener.notifies(timeout=30, stop_after=1))
    assert [n.payload for n in notes] == ["marker"]


def test_disabled_creates_nothing_and_records_nothing(installed):
    set_enabled(installed.settings, False)
    plain = installed.signup({"full_name": "Plain"})
    execute(installed, REJECT_ALL)
    rejected = installed.signup({"full_name": "Would fail"})
    installed.bulk_signup(10)
    assert installed.scalar("select count(*) from auth.users") == 12
    assert profile_of(installed, plain) is None
    assert profile_of(installed, rejected) is None
    assert installed.scalar("select count(*) from public.profiles") == 0
    assert failures(installed) == []


def test_trigger_uses_indexes_even_when_statistics_say_profiles_is_empty(installed):
    """A plan made while the profile table looked empty must not scan it once per new row."""
    with installed.connect() as conn:
        conn.execute("analyze public.profiles")  # statistics: empty
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data)"
            " select gen_random_uuid(), 'authenticated', 'authenticated', 'seed' || g || '@x.test',"
            " jsonb_build_object('user_name', 'seed' || g) from generate_series(1, 500) g"
        )

        def seq_scans() -> int:
            conn.execute("select pg_stat_force_next_flush()")
            row = conn.execute(
                "select seq_scan from pg_stat_user_tables where relid = 'public.profiles'::regclass"
            ).fetchone()
            assert row is not None
            return int(row[0])

        before = seq_scans()
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data)"
            " select gen_random_uuid(), 'authenticated', 'authenticated', 'bulk' || g || '@x.test',"
            " jsonb_build_object('user_name', 'bulk' || (g % 300)) from generate_series(1, 2000) g"
        )
        for n in range(20):
            conn.execute(
                "insert into auth.users (id, aud, role, email, raw_user_meta_data)"
                " values (gen_random_uuid(), 'authenticated', 'authenticated', %s, %s)",
                (f"single{n}@x.test", '{"user_name": "single"}'),
            )
        after = seq_scans()
    assert installed.scalar("select count(*) from public.profiles") == 2520
    assert after - before < 5, f"{after - before} sequential scans of public.profiles"

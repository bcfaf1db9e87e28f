"""Profiles follow their users after creation: update policies, the UPDATE triggers, redaction.

Every test runs Supabase Auth-shaped statements against the real server: a login moves
last_sign_in_at, a social login rewrites raw_user_meta_data, a soft delete sets deleted_at,
replaces the email and clears both metadata columns.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import psycopg
import pytest
from conftest import TestDB
from psycopg.conninfo import make_conninfo

from profileguard.config import load_settings
from profileguard.errors import ConfigError
from profileguard.install import install, uninstall

FOLLOW = {"full_name": "follow", "avatar_url": "fill_empty"}


def with_policies(db: TestDB, policies: dict[str, str], **more: object) -> TestDB:
    """Re-install with [sync] policies (and other settings) and return the db with them."""
    settings = replace(db.settings, sync_policies=policies, **more)  # type: ignore[arg-type]
    install(settings)
    return TestDB(db.url, settings)


def profile(db: TestDB, uid: uuid.UUID) -> dict[str, object]:
    with db.connect() as conn:
        row = conn.execute(
            "select username, full_name, avatar_url from public.profiles where id = %s", (uid,)
        ).fetchone()
    assert row is not None
    return {"username": row[0], "full_name": row[1], "avatar_url": row[2]}


def social_login(conn: psycopg.Connection, uid: uuid.UUID, meta: dict[str, object]) -> None:
    """What Supabase Auth does on an OAuth login: metadata rewritten, then last_sign_in_at."""
    conn.execute(
        "update auth.users set raw_user_meta_data = %s where id = %s", (json.dumps(meta), uid)
    )
    conn.execute("update auth.users set last_sign_in_at = now() where id = %s", (uid,))


def sync_failures(db: TestDB) -> list[tuple[object, ...]]:
    with db.connect() as conn:
        return conn.execute(
            "select user_id, sqlstate, category from profileguard.events"
            " where kind = 'failure' and source = 'sync' order by id"
        ).fetchall()


def test_changed_name_follows_in_the_same_transaction_fill_empty_keeps_edit(installed):
    db = with_policies(installed, FOLLOW)
    meta = {"full_name": "Ada", "avatar_url": "https://a/1.png", "user_name": "ada"}
    uid = db.signup(meta, email="ada@example.com")
    with db.connect() as conn:  # the user edits her avatar in the app
        conn.execute("update public.profiles set avatar_url = 'mine.png' where id = %s", (uid,))
    with db.connect(autocommit=False) as conn:
        social_login(
            conn,
            uid,
            {**meta, "full_name": "Ada Lovelace", "avatar_url": "b.png", "user_name": "lovelace"},
        )
        in_tx = conn.execute(
            "select full_name from public.profiles where id = %s", (uid,)
        ).fetchone()
        assert in_tx == ("Ada Lovelace",)  # before commit: same transaction
        conn.commit()
    assert profile(db, uid) == {
        "username": "ada",
        "full_name": "Ada Lovelace",
        "avatar_url": "mine.png",
    }
    assert sync_failures(db) == []


def test_fill_empty_fills_an_empty_value_and_username_never_changes(installed):
    db = with_policies(installed, FOLLOW)
    uid = db.signup({"user_name": "grace"}, email="g@example.com")
    assert profile(db, uid)["avatar_url"] is None
    with db.connect() as conn:
        social_login(
            conn, uid, {"user_name": "hopper", "full_name": "Grace", "avatar_url": "g.png"}
        )
    assert profile(db, uid) == {"username": "grace", "full_name": "Grace", "avatar_url": "g.png"}


def test_default_policies_never_overwrite(installed):
    """Without [sync]: username never, other columns fill_empty."""
    uid = installed.signup({"full_name": "Old", "user_name": "olduser"})
    with installed.connect() as conn:
        social_login(conn, uid, {"full_name": "New", "user_name": "newuser", "avatar_url": "x.png"})
    assert profile(installed, uid) == {
        "username": "olduser",
        "full_name": "Old",
        "avatar_url": "x.png",
    }


def test_admin_created_user_ends_with_the_updated_values(installed):
    db = with_policies(installed, FOLLOW)
    uid = uuid.uuid4()
    with db.connect(autocommit=False) as conn:  # insert, then update, one transaction
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " values (%s, 'authenticated', '', 'admin@example.com', %s, now())",
            (uid, json.dumps({"full_name": "Draft", "avatar_url": "draft.png"})),
        )
        conn.execute(
            "update auth.users set role = 'authenticated', raw_app_meta_data = '{}',"
            " raw_user_meta_data = %s, email_confirmed_at = now() where id = %s",
            (json.dumps({"full_name": "Final", "avatar_url": "final.png"}), uid),
        )
        conn.commit()
    got = profile(db, uid)
    assert (got["full_name"], got["avatar_url"]) == ("Final", "final.png")
    # A later update of another user's own edit is kept (fill_empty holds outside the creator).
    with db.connect() as conn:
        conn.execute("update public.profiles set avatar_url = 'edit.png' where id = %s", (uid,))
        social_login(conn, uid, {"full_name": "Final", "avatar_url": "again.png"})
    assert profile(db, uid)["avatar_url"] == "edit.png"


@pytest.mark.parametrize("users", [1500, 2500])  # queued keys; past the queue: one pass over all
def test_bulk_update_past_64_rows_syncs_every_profile(installed, users):
    db = with_policies(installed, FOLLOW)
    db.bulk_signup(users)
    with db.connect() as conn:
        conn.execute(
            "update auth.users set raw_user_meta_data ="
            " jsonb_build_object('full_name', 'Renamed ' || email)"
        )
        left = conn.execute(
            "select count(*) from public.profiles p join auth.users u using (id)"
            " where p.full_name is distinct from 'Renamed ' || u.email"
        ).fetchone()
    assert left == (0,)
    assert sync_failures(db) == []


def test_a_constraint_that_rejects_the_value_never_fails_the_login(installed):
    db = with_policies(installed, FOLLOW)
    uid = db.signup({"full_name": "Ada"})
    with db.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint no_bob"
            " check (full_name is distinct from 'Bob')"
        )
        social_login(conn, uid, {"full_name": "Bob"})
        assert conn.execute(
            "select raw_user_meta_data ->> 'full_name' from auth.users where id = %s", (uid,)
        ).fetchone() == ("Bob",)
    assert profile(db, uid)["full_name"] == "Ada"
    assert sync_failures(db) == [(str(uid), "23514", "constraint")]


def test_strict_mode_fails_the_update(installed):
    settings = replace(installed.settings, sync_policies=FOLLOW)
    install(settings, strict=True)
    uid = installed.signup({"full_name": "Ada"})
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint no_bob"
            " check (full_name is distinct from 'Bob')"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            social_login(conn, uid, {"full_name": "Bob"})


def test_update_as_supabase_auth_admin(installed):
    """Supabase Auth's role (search_path auth, no rights on public) updates; the sync works."""
    db = with_policies(installed, FOLLOW)
    uid = db.signup({"full_name": "Ada"})
    with psycopg.connect(
        make_conninfo(db.url, user="supabase_auth_admin"), autocommit=True
    ) as conn:
        social_login(conn, uid, {"full_name": "Ada L"})
    assert profile(db, uid)["full_name"] == "Ada L"
    assert sync_failures(db) == []


def test_config_rejects_unknown_policy_and_unmapped_column(tmp_path, installed):
    file = tmp_path / "profileguard.toml"
    file.write_text('[sync]\nfull_name = "always"\n')
    with pytest.raises(ConfigError, match=r"sync\.full_name"):
        load_settings(file, env={})
    file.write_text('[sync]\nbio = "follow"\n')
    settings = load_settings(file, env={}, database_url=installed.url)
    with pytest.raises(ConfigError, match=r"sync\.bio"):
        install(settings)
    file.write_text('[sync]\nfull_name = "follow"\n[delete]\nredact = ["full_name"]\n')
    loaded = load_settings(file, env={})
    assert loaded.sync_policies == {"full_name": "follow"}
    assert loaded.redact_columns == ("full_name",)


def _profile_updates(db: TestDB) -> int:
    """n_tup_upd of the profile table as the statistics system has it now (a fresh snapshot)."""
    with db.connect() as conn:
        conn.execute("select pg_stat_clear_snapshot()")
        row = conn.execute(
            "select n_tup_upd from pg_stat_user_tables where relid = 'public.profiles'::regclass"
        ).fetchone()
    return int(row[0]) if row else -1


def test_10k_logins_and_same_value_relogins_write_no_profile(installed):
    """Logins (last_sign_in_at only) and social re-logins with the same metadata write nothing;
    the positive control (one changed name, in the same session, after them) writes once. Stats
    are flushed when that session ends, so once the control is counted, the logins are too."""
    from conftest import wait_for

    db = with_policies(installed, FOLLOW)
    db.bulk_signup(100)
    # Let earlier writes (the bulk signup's profiles) reach the statistics first.
    with db.connect():
        pass
    before = _profile_updates(db)
    assert wait_for(lambda: _profile_updates(db) == before, timeout=2)
    with db.connect() as conn:
        conn.execute(
            "do $$ declare v uuid[] := array(select id from auth.users order by id);"
            " begin for i in 1 .. 10000 loop"
            "   update auth.users set last_sign_in_at = now() where id = v[1 + i % 100];"
            " end loop;"
            " for i in 1 .. 1000 loop"
            "   update auth.users set raw_user_meta_data = raw_user_meta_data"
            "     || '{}'::jsonb where id = v[1 + i % 100];"
            " end loop; end $$"
        )
        conn.execute(
            'update auth.users set raw_user_meta_data = \'{"full_name": "Control"}\''
            " where id = (select id from auth.users order by id limit 1)"
        )
    assert wait_for(lambda: _profile_updates(db) >= before + 1, timeout=30)
    assert _profile_updates(db) == before + 1
    assert sync_failures(db) == []


def test_a_locked_profile_table_never_stalls_a_login(installed):
    """The lock budget: the update waits about lock_timeout_ms, commits, and the 55P03 is
    recorded for the worker."""
    import time

    db = with_policies(installed, FOLLOW)
    uid = db.signup({"full_name": "Ada"})
    with db.connect(autocommit=False) as locker:
        locker.execute("lock table public.profiles in access exclusive mode")
        began = time.monotonic()
        with db.connect() as conn:
            social_login(conn, uid, {"full_name": "Ada L"})
        assert time.monotonic() - began < 5
        locker.rollback()
    assert sync_failures(db) == [(str(uid), "55P03", "transient")]
    assert profile(db, uid)["full_name"] == "Ada"


def test_uninstall_removes_the_update_triggers(installed):
    db = with_policies(installed, FOLLOW)
    assert (
        db.scalar(
            "select count(*) from pg_trigger where tgrelid = 'auth.users'::regclass"
            " and tgname like 'profileguard_after_update%%'"
        )
        == 2
    )
    uninstall(db.settings)
    assert (
        db.scalar(
            "select count(*) from pg_trigger where tgrelid = 'auth.users'::regclass"
            " and tgname like 'profileguard%%'"
        )
        == 0
    )
    uid = db.signup({"full_name": "Ada"})
    with db.connect() as conn:
        social_login(conn, uid, {"full_name": "Ada L"})  # no trigger left to fail it

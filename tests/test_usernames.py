"""Derived usernames: collisions, too-short names, the email opt-in, and a concurrent race."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid

from conftest import key_hash

from profileguard.config import load_settings
from profileguard.install import install, set_enabled
from profileguard.mapping.insert import _length_bounds


def execute(db, query: str, params=None) -> None:
    with db.connect() as conn:
        conn.execute(query, params)


def username(db, uid):
    return db.scalar("select username from public.profiles where id = %s", (uid,))


def suffixed(name: str, uid: uuid.UUID) -> str:
    return f"{name}_{key_hash(uid)}"


def failure_count(db) -> int:
    return db.scalar("select count(*) from profileguard.failures")


def test_colliding_names_across_signups(installed):
    ids = [installed.signup({"user_name": "alice"}) for _ in range(4)]
    assert installed.scalar("select count(*) from public.profiles") == 4
    assert username(installed, ids[0]) == "alice"
    for uid in ids[1:]:
        assert username(installed, uid) == suffixed("alice", uid)
    assert failure_count(installed) == 0


def test_colliding_names_in_one_bulk_statement(installed):
    ids = sorted(uuid.uuid4() for _ in range(20))
    with installed.connect() as conn:
        conn.execute(
            "insert into auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " select i, 'authenticated', 'authenticated', null, %s, now()"
            " from unnest(%s::uuid[]) i",
            (json.dumps({"user_name": "bob"}), ids),
        )
    assert installed.scalar("select count(*) from public.profiles") == 20
    # Within one statement the lowest id keeps the plain name; the rest get the short suffix.
    assert username(installed, ids[0]) == "bob"
    for uid in ids[1:]:
        assert username(installed, uid) == suffixed("bob", uid)
    assert failure_count(installed) == 0


def test_bulk_statement_colliding_with_existing_profile(installed):
    first = installed.signup({"user_name": "carl"})
    ids = sorted(uuid.uuid4() for _ in range(3))
    with installed.connect() as conn:
        conn.execute(
            "insert into auth.users (id, aud, role, raw_user_meta_data, created_at)"
            " select i, 'authenticated', 'authenticated', %s, now() from unnest(%s::uuid[]) i",
            (json.dumps({"user_name": "carl"}), ids),
        )
    assert username(installed, first) == "carl"
    for uid in ids:
        assert username(installed, uid) == suffixed("carl", uid)


def test_a_colliding_bulk_sends_only_its_colliding_rows_through_the_collision_path(installed):
    """A bulk insert whose names collide with each other and with an existing profile, some of
    its users' profiles made first by another trigger: every user keeps one profile, each name
    is held once (the lowest key of a name keeps it plainly, though inserted last) and nothing
    is recorded as failed. The retry after the first try's unique violation tries each row as
    the first try does, and only the rows whose name was taken again with the collision path's
    candidates: a BEFORE INSERT trigger on the profile table logs every row tried."""
    installed.signup({"user_name": "dora"})
    execute(
        installed,
        "create table public.tried (n bigserial, id uuid, username text);"
        " create function public.log_try() returns trigger language plpgsql as $$ begin"
        " insert into public.tried (id, username) values (new.id, new.username);"
        " return new; end $$;"
        " create trigger log_try before insert on public.profiles"
        " for each row execute function public.log_try();"
        " create function public.legacy() returns trigger language plpgsql as $$ begin"
        " if new.raw_user_meta_data ? 'legacy' then"
        " insert into public.profiles (id, full_name) values (new.id, 'legacy'); end if;"
        " return new; end $$;"
        " create trigger legacy after insert on auth.users"
        " for each row execute function public.legacy()",
    )
    names = ["dora"] * 4 + ["eve"] * 10 + [f"uma{i}" for i in range(20)]
    metas = [{"user_name": n} for n in names]
    metas += [{"user_name": f"leo{i}", "legacy": True} for i in range(3)]
    ids = sorted(uuid.uuid4() for _ in metas)
    with installed.connect() as conn:
        conn.execute(
            "insert into auth.users (id, aud, role, raw_user_meta_data, created_at)"
            " select r.id, 'authenticated', '', r.meta::jsonb, now()"
            " from unnest(%s::uuid[], %s::text[]) as r(id, meta)",
            (ids[::-1], [json.dumps(m) for m in metas[::-1]]),  # the highest key first
        )
    assert failure_count(installed) == 0
    given = dict(
        installed.scalar(
            "select json_agg(json_build_array(u.id, p.username)) from unnest(%s::uuid[]) u(id)"
            " join public.profiles p on p.id = u.id",
            (ids,),
        )
    )
    assert len(given) == len(ids)
    held = "select count(username) = count(distinct username) from public.profiles"
    assert installed.scalar(held)
    dora, eve, uma, leo = ids[:4], ids[4:14], ids[14:34], ids[34:]
    assert [given[str(u)] for u in dora] == [suffixed("dora", u) for u in dora]
    assert [given[str(u)] for u in eve] == ["eve", *(suffixed("eve", u) for u in eve[1:])]
    assert [given[str(u)] for u in uma] == [f"uma{i}" for i in range(20)]
    assert [given[str(u)] for u in leo] == [None] * 3  # the other trigger's profiles are kept
    with installed.connect() as conn:
        tried = conn.execute(
            "select t.id, array_agg(t.username order by t.n) from public.tried t group by t.id"
        ).fetchall()
    tries = {str(uid): names for uid, names in tried}
    # Only the rows whose name was taken were tried twice: as the first try gives it, then
    # with the collision path's suffix; every other row once.
    colliding = [*dora, *eve[1:]]
    assert {str(u): tries[str(u)] for u in colliding} == {
        str(u): [given[str(u)].rsplit("_", 1)[0], given[str(u)]] for u in colliding
    }
    assert {str(u): tries[str(u)] for u in [eve[0], *uma]} == {
        str(u): [given[str(u)]] for u in [eve[0], *uma]
    }


def test_too_short_names_get_suffix(installed):
    short = installed.signup({"user_name": "ab"})
    one = installed.signup({"preferred_username": "x"}, email="xavier@example.com")
    exact = installed.signup({"user_name": "abc"})
    assert username(installed, short) == suffixed("ab", short)
    assert username(installed, one) == suffixed("x", one)
    assert username(installed, exact) == "abc"
    assert failure_count(installed) == 0


def test_email_gives_no_username_unless_mapped(installed):
    uid = installed.signup({}, email="dora.explorer@example.com")
    assert username(installed, uid) is None
    # Opted in: the local part is the last source; metadata wins over it.
    install(with_email_usernames(installed.settings))
    later = installed.signup({}, email="dora.later@example.com")
    assert username(installed, later) == "dora.later"  # no provider recorded: an operator's row
    other = installed.signup({"user_name": "meta_name"}, email="mail_name@example.com")
    assert username(installed, other) == "meta_name"
    # The email's local part is the user's choice: an email sign-up gets it with the suffix.
    mail = _bulk(installed, [{}], provider="email")[0]
    execute(installed, "update auth.users set email = 'linus@example.com' where id = %s", (mail,))
    execute(installed, "delete from public.profiles where id = %s", (mail,))
    execute(installed, "select profileguard.ensure_profile(%s)", (mail,))
    assert username(installed, mail) == suffixed("linus", mail)


def with_email_usernames(settings):
    """`settings` with the README's opt-in mapping: the email's local part after the handles."""
    from dataclasses import replace

    from profileguard.config import Source

    mapping = dict(settings.mapping)
    mapping["username"] = (*mapping["username"], Source("email", (), "localpart"))
    return replace(settings, mapping=mapping, mapping_is_default=False, preset=None)


def test_name_equal_to_existing_profile_username(installed):
    holder = installed.signup({"full_name": "Holder"})
    execute(installed, "update public.profiles set username = 'erin' where id = %s", (holder,))
    by_handle = installed.signup({"user_name": "erin"}, email="someone@example.com")
    by_meta = installed.signup({"preferred_username": "erin"})
    assert username(installed, holder) == "erin"
    assert username(installed, by_handle) == suffixed("erin", by_handle)
    assert username(installed, by_meta) == suffixed("erin", by_meta)


def test_ensure_profile_with_colliding_name(installed):
    installed.signup({"user_name": "frank"})
    set_enabled(installed.settings, False)
    late = installed.signup({"user_name": "frank", "full_name": "Late Frank"})
    set_enabled(installed.settings, True)
    assert username(installed, late) is None
    with installed.connect() as conn:
        created, profile = conn.execute(
            "select created, profile from profileguard.ensure_profile(%s)", (late,)
        ).fetchone()
    assert created is True
    assert profile["username"] == suffixed("frank", late)
    assert profile["full_name"] == "Late Frank"
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'repair' and user_id = %s",
            (str(late),),
        )
        == 1
    )


def test_null_username_allowed(installed):
    uid = installed.signup({"full_name": "No Name"})  # no user_name, no email
    profile = installed.scalar("select to_jsonb(p) from public.profiles p where id = %s", (uid,))
    assert profile is not None
    assert profile["username"] is None
    assert profile["full_name"] == "No Name"
    # Several users without a username do not collide.
    others = [installed.signup({}) for _ in range(3)]
    assert all(username(installed, u) is None for u in others)
    assert installed.scalar("select count(*) from public.profiles") == 4
    assert failure_count(installed) == 0


def test_names_colliding_after_truncation_to_check_maximum(db):
    # Names longer than the maximum are cut; two that share the first 12 characters collide.
    execute(
        db,
        "create table public.profiles ("
        " id uuid primary key references auth.users (id) on delete cascade,"
        " username text unique check (char_length(username) between 3 and 12))",
    )
    install(db.settings)
    first = db.signup({"user_name": "abcdefghijklmnopXXX"})
    second = db.signup({"user_name": "abcdefghijklmnopYYY"})
    assert username(db, first) == "abcdefghijkl"
    # 12 - len('_') - 8 hex characters leaves 3 of the name.
    assert username(db, second) == f"abc_{key_hash(second)}"
    assert failure_count(db) == 0


def test_only_length_checks_count_as_lengths():
    # The signup's first insert leaves out a CHECK these bounds say its names satisfy: anything
    # but a conjunction of character-length comparisons must be kept.
    assert _length_bounds(
        "(char_length(username) >= 3) AND (char_length(username) <= 12)", "username"
    ) == (3, 12)
    assert _length_bounds("char_length((username)::text) > 2", "username") == (3, sys.maxsize)
    for body in (
        "char_length(username) >= 3 OR username IS NULL",
        "(char_length(username) >= 3 AND username <> 'x') OR true",
        "char_length(username) = 3",
        "octet_length(username) <= 24",
        "char_length(lower(username)) >= 3",
        "char_length(other) >= 3",
        "(username ~ '^a') AND (char_length(username) >= 3)",
    ):
        assert _length_bounds(body, "username") is None, body


def test_names_colliding_after_truncation_in_one_statement(db):
    execute(
        db,
        "create table public.profiles ("
        " id uuid primary key references auth.users (id) on delete cascade,"
        " username varchar(12) unique)",
    )
    install(db.settings)
    ids = sorted(uuid.uuid4() for _ in range(2))
    with db.connect() as conn:
        conn.execute(
            "insert into auth.users (id, raw_user_meta_data) values (%s, %s), (%s, %s)",
            (
                ids[0],
                json.dumps({"user_name": "abcdefghijklmnopXXX"}),
                ids[1],
                json.dumps({"user_name": "abcdefghijklmnopYYY"}),
            ),
        )
    assert username(db, ids[0]) == "abcdefghijkl"
    assert username(db, ids[1]) == f"abc_{key_hash(ids[1])}"
    assert failure_count(db) == 0


def _wait_until_blocked(db, pid: int) -> None:
    """Poll until backend `pid` waits on a lock (bounded; not a timing assertion)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = db.scalar("select wait_event_type from pg_stat_activity where pid = %s", (pid,))
        if state == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError(f"backend {pid} never blocked on a lock")


def test_concurrent_signups_with_same_name(installed):
    a_id, b_id = uuid.uuid4(), uuid.uuid4()
    conn_a = installed.connect(autocommit=False)
    conn_b = installed.connect(autocommit=False)
    errors: list[BaseException] = []

    def signup_b() -> None:
        try:
            installed.signup({"user_name": "racer"}, user_id=b_id, conn=conn_b)
            conn_b.commit()
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
            conn_b.rollback()

    try:
        installed.signup({"user_name": "racer"}, user_id=a_id, conn=conn_a)  # held open
        b_pid = conn_b.info.backend_pid
        thread = threading.Thread(target=signup_b)
        thread.start()
        _wait_until_blocked(installed, b_pid)  # B's insert waits on A's 'racer'
        conn_a.commit()
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        conn_a.close()
        conn_b.close()

    assert errors == []
    both = installed.scalar("select count(*) from auth.users where id in (%s, %s)", (a_id, b_id))
    assert both == 2
    assert username(installed, a_id) == "racer"
    # B hit the unique violation after A committed; the retry sees "racer" taken.
    assert username(installed, b_id) == f"racer_{key_hash(b_id)}"
    assert failure_count(installed) == 0


# --- the tables people have (issue: usernames for real tables) ---------------------------------


def _table(db, ddl: str, **settings) -> None:
    execute(db, ddl)
    install(db.settings.with_overrides(**settings) if settings else db.settings)


def _bulk(db, metas: list[dict], *, provider: str | None = "github") -> list[uuid.UUID]:
    ids = sorted(uuid.uuid4() for _ in metas)
    app = json.dumps({"provider": provider}) if provider else None
    with db.connect() as conn:
        conn.execute(
            "insert into auth.users (id, aud, role, raw_user_meta_data, raw_app_meta_data)"
            " select r.id, 'authenticated', '', r.meta::jsonb, %s::jsonb"
            " from unnest(%s::uuid[], %s::text[]) as r(id, meta)",
            (app, ids, [json.dumps(m) for m in metas]),
        )
    return ids


def _all_served(db) -> None:
    row = db.scalar(
        "select json_build_array((select count(*) from auth.users u where not exists"
        " (select from public.profiles p where p.id = u.id)),"
        " (select count(*) from profileguard.events where kind = 'failure'))"
    )
    assert row == [0, 0]


def test_lower_unique_index_compares_case_insensitively(db):
    _table(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " username text); create unique index on public.profiles (lower(username))",
    )
    first, second = _bulk(db, [{"user_name": "Alice"}, {"user_name": "aLICE"}])
    third = _bulk(db, [{"user_name": "ALICE"}])[0]
    _all_served(db)
    assert username(db, first) == "Alice"
    assert username(db, second) == suffixed("aLICE", second)
    assert username(db, third) == suffixed("ALICE", third)


def test_regex_check_gets_a_name_that_passes(db):
    _table(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " username text unique check (username ~ '^[a-z0-9_]{3,24}$'))",
    )
    holder = _bulk(db, [{"user_name": "grace_hopper"}])[0]
    grace, john, emoji, long = _bulk(
        db,
        [
            {"user_name": "Grace Hopper"},
            {"user_name": "john.doe"},
            {"user_name": "🦄🦄🦄"},
            {"user_name": "x" * 40},
        ],
    )
    _all_served(db)
    names = {uid: username(db, uid) for uid in (holder, grace, john, emoji, long)}
    assert all(re.fullmatch(r"[a-z0-9_]{3,24}", n) for n in names.values()), names
    assert len(set(names.values())) == len(names)
    assert names[holder] == "grace_hopper" and names[john] == "john_doe"
    assert names[grace] == suffixed("grace_hopper", grace)
    assert names[emoji] == suffixed("user", emoji)


def test_octet_length_check_and_partial_unique_index(db):
    _table(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " username text check (octet_length(username) <= 24), deleted_at timestamptz);"
        " create unique index on public.profiles (username) where deleted_at is null",
    )
    ids = _bulk(db, [{"user_name": "🦄" * 10}, {"user_name": "dup"}, {"user_name": "dup"}])
    _all_served(db)
    names = [username(db, uid) for uid in ids]
    assert all(len(n.encode()) <= 24 for n in names)
    assert len(set(names)) == 3


def test_varchar16_text_keys_sharing_a_prefix(db):
    execute(
        db,
        "create table public.accounts (id text primary key, email text,"
        " raw_user_meta_data jsonb);"
        " create table public.members (id text primary key references public.accounts,"
        " username varchar(16) unique not null)",
    )
    settings = load_settings(
        env={},
        database_url=db.url,
        identity_table="public.accounts",
        profile_table="public.members",
    )
    install(settings)
    keys = [f"tenant-000000000-{i:04d}" for i in range(40)]
    with db.connect() as conn:
        conn.execute(
            "insert into public.accounts (id, raw_user_meta_data)"
            ' select k, \'{"user_name": "averyveryverylongname"}\' from unnest(%s::text[]) k',
            (keys,),
        )
    rows = db.scalar("select json_agg(username) from public.members")
    assert len(rows) == 40 == len(set(rows))
    assert db.scalar("select count(*) from profileguard.events where kind = 'failure'") == 0


def test_megabyte_name_and_invisible_characters(installed):
    big, bidi, ctrl, spaced = _bulk(
        installed,
        [
            {"user_name": "a" * 1_000_000},
            {"user_name": "\u202eevil\u202c"},
            {"user_name": "x\x01y\u200bz"},
            {"user_name": "\u3000 \uff21\uff22\uff23 \u00a0"},
        ],
    )
    _all_served(installed)
    assert username(installed, big) == "a" * 64
    assert username(installed, bidi) == "evil"
    assert username(installed, ctrl) == "xyz"
    assert username(installed, spaced) == "ABC"  # NFKC: full-width letters, spaces trimmed


def test_arrays_and_objects_are_not_names(installed):
    """An array or an object in the metadata is no name: it is passed over like a missing
    value, a string that merely looks like one is kept."""
    arr, obj, fell, number, looks, both = _bulk(
        installed,
        [
            {"preferred_username": ["arr"]},
            {"user_name": {"login": "obj"}},
            {"user_name": ["arr"], "preferred_username": "bob"},
            {"user_name": 4242},
            {"user_name": '["arr"]'},
            {"user_name": ["x"], "preferred_username": {"y": 1}},
        ],
    )
    one = installed.signup({"user_name": ["solo"], "preferred_username": "solo_next"})
    _all_served(installed)
    assert username(installed, arr) is None
    assert username(installed, obj) is None
    assert username(installed, fell) == "bob"
    assert username(installed, number) == "4242"
    assert username(installed, looks) == '["arr"]'
    assert username(installed, both) is None
    assert username(installed, one) == "solo_next"


def test_a_name_empty_after_cleaning_falls_through(installed):
    """A name made only of invisible characters and spaces is no name: the next source with a
    value is taken, on the bulk path, the single sign-up and ensure_profile alike."""
    meta = {"user_name": "\u200b\u202e\u3000\u2066", "preferred_username": "carol"}
    bulk, alone = _bulk(installed, [meta, {"user_name": "\u200b\x07", "preferred_username": " "}])
    single = installed.signup({"user_name": "\ufeff \u200d", "preferred_username": "dave"})
    _all_served(installed)
    assert username(installed, bulk) == "carol"
    assert username(installed, alone) is None
    assert username(installed, single) == "dave"
    execute(installed, "delete from public.profiles where id = %s", (bulk,))
    execute(installed, "select profileguard.ensure_profile(%s)", (bulk,))
    assert username(installed, bulk) == "carol"


def test_an_empty_provider_name_does_not_vouch_for_the_next_source(installed):
    """A provider's name that cleans to nothing falls through, but the name after it is not the
    provider's: an OAuth sign-up does not get the email's local part plainly."""
    install(with_email_usernames(installed.settings))
    oauth, typed = _bulk(installed, [{"user_name": "\u200b"}] * 2, provider="github")
    mail = _bulk(installed, [{"user_name": "\u200b\u2066"}], provider="email")[0]
    for uid, who in ((oauth, "linus"), (typed, "grace"), (mail, "ada")):
        execute(installed, "update auth.users set email = %s where id = %s", (f"{who}@x.org", uid))
        execute(installed, "delete from public.profiles where id = %s", (uid,))
        execute(installed, "select profileguard.ensure_profile(%s)", (uid,))
    single = installed.signup({"user_name": "\ufeff"}, email="joan@x.org")
    _all_served(installed)
    assert username(installed, oauth) is None
    assert username(installed, typed) is None
    assert username(installed, mail) == suffixed("ada", mail)  # fell through, not vouched for
    assert username(installed, single) == "joan"  # no provider recorded: written by an operator


def test_names_confusable_with_reserved_ones_are_suffixed(installed):
    """A name that is not plain ASCII is compared with the reserved ones on its skeleton (TR39
    confusables, combining marks removed): vouched for or not, it is never given plainly."""
    cyrillic, dotted, greek, dze, accented = _bulk(
        installed,
        [
            {"user_name": "\u0430dmin"},  # Cyrillic a
            {"user_name": "admi\u0307n"},  # i with a combining dot above
            {"user_name": "R\u039f\u039fT"},  # Greek capital omicrons
            {"preferred_username": "\u0455upport"},  # Cyrillic dze
            {"user_name": "\u00e9mile"},  # not confusable with a reserved name
        ],
    )
    single = installed.signup({"user_name": "\u0430dm\u0456n"})  # Cyrillic a and i
    _all_served(installed)
    assert username(installed, cyrillic) == suffixed("\u0430dmin", cyrillic)
    assert username(installed, dotted) == suffixed("admi\u0307n", dotted)
    assert username(installed, greek) == suffixed("R\u039f\u039fT", greek)
    assert username(installed, dze) == suffixed("\u0455upport", dze)
    assert username(installed, accented) == "\u00e9mile"
    assert username(installed, single) == suffixed("\u0430dm\u0456n", single)
    execute(installed, "delete from public.profiles where id = %s", (cyrillic,))
    execute(installed, "select profileguard.ensure_profile(%s)", (cyrillic,))
    assert username(installed, cyrillic) == suffixed("\u0430dmin", cyrillic)


def test_reserved_names_are_suffixed(installed):
    admin, root = _bulk(installed, [{"user_name": "Admin"}, {"user_name": "root"}])
    assert username(installed, admin) == suffixed("Admin", admin)
    assert username(installed, root) == suffixed("root", root)


def test_squat_email_signup_cannot_take_a_provider_name(installed):
    """Documented default (username.unverified = "suffix"): a name the client typed into an
    email sign-up's metadata is given with the suffix; the plain name stays free for the
    account a provider vouches for."""
    squatter = _bulk(installed, [{"user_name": "torvalds"}], provider="email")[0]
    github = _bulk(installed, [{"user_name": "torvalds"}], provider="github")[0]
    assert username(installed, squatter) == suffixed("torvalds", squatter)
    assert username(installed, github) == "torvalds"
    # The email's local part gives no name at all (see test_email_gives_no_username_unless_mapped).
    mail = installed.signup({}, email="linus@example.com")
    assert username(installed, mail) is None


def test_squat_with_unverified_plain_is_first_come(db):
    execute(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " username text unique)",
    )
    policy = db.settings.username
    from dataclasses import replace

    install(replace(db.settings, username=replace(policy, unverified="plain")))
    squatter = _bulk(db, [{"user_name": "torvalds"}], provider="email")[0]
    github = _bulk(db, [{"user_name": "torvalds"}], provider="github")[0]
    assert username(db, squatter) == "torvalds"
    assert username(db, github) == suffixed("torvalds", github)


def test_lowercase_and_pattern_policy(db):
    execute(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " username text unique)",
    )
    from dataclasses import replace

    policy = replace(db.settings.username, lowercase=True, pattern="^[a-z0-9_.é]{3,20}$")
    install(replace(db.settings, username=policy))
    upper, accented, spaced = _bulk(
        db, [{"user_name": "LINUS"}, {"user_name": "ÉMILE"}, {"user_name": "Grace Hopper"}]
    )
    assert username(db, upper) == "linus"
    assert username(db, accented) == "émile"
    assert username(db, spaced) == "grace_hopper"


def test_a_name_cut_to_the_column_is_trimmed_again(db):
    execute(
        db,
        "create table public.profiles (id uuid primary key references auth.users,"
        " username varchar(16) unique)",
    )
    install(db.settings)
    (uid,) = _bulk(db, [{"user_name": "[-227161765044, 1]"}])  # cut after the comma
    assert username(db, uid) == "[-227161765044,"

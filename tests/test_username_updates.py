"""The username policy after creation: a `follow` username takes a changed name only as a
sign-up would give it (cleaned, never reserved nor confusable with a reserved name, never taken),
a rejected name leaves the stored one and never holds back the row's other columns, and a
signed-in user cannot write the username column of the created table at all.

Names reach the metadata as Supabase Auth's user update writes them (`data` merged into
raw_user_meta_data by an UPDATE of auth.users).
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from dataclasses import replace

import pytest
from conftest import TestDB, key_hash
from psycopg import sql
from test_security import as_client, denied

from profileguard.install import install, set_enabled
from profileguard.mapping import INVISIBLE_CATEGORIES

FOLLOW = {"username": "follow", "full_name": "follow"}
LONG = "z" * 5000
# Names the policy never stores, with what the profile holds after each (None: the stored
# name stays).
REJECTED = {
    "admin": None,  # reserved
    "ROOT": None,  # reserved, case-insensitively
    "\u0430dmin": None,  # a Cyrillic a: confusable with admin
    "admi\u0307n": None,  # a combining dot above the i
    "\u0455upport": None,  # a Cyrillic dze
    "\u202eevil\u200b": "evil",  # bidi override and zero-width space cleaned away
    "x\x07y": None,  # BEL cleaned away: 'xy' is too short for the table's CHECK
    "\u200b\u2066": None,  # nothing left after cleaning
    LONG: "z" * 64,  # cut to the policy's 64 characters, never stored whole
}


def following(db: TestDB) -> TestDB:
    settings = replace(db.settings, sync_policies=FOLLOW)
    install(settings)
    return TestDB(db.url, settings)


def user_update(db: TestDB, uid: uuid.UUID, data: dict[str, object]) -> None:
    """What Supabase Auth's user update does with `data`: merged into the user's metadata."""
    with db.connect() as conn:
        conn.execute(
            "update auth.users set raw_user_meta_data = raw_user_meta_data || %s::jsonb"
            " where id = %s",
            (json.dumps(data), uid),
        )


def profile(db: TestDB, uid: uuid.UUID) -> tuple[str | None, str | None]:
    with db.connect() as conn:
        row = conn.execute(
            "select username, full_name from public.profiles where id = %s", (uid,)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def failures(db: TestDB) -> int:
    return int(db.scalar("select count(*) from profileguard.events where kind = 'failure'"))


def clean(name: str) -> bool:
    return not any(unicodedata.category(c) in INVISIBLE_CATEGORIES for c in name)


def test_a_followed_username_takes_a_clean_new_name(installed: TestDB) -> None:
    db = following(installed)
    uid = db.signup({"user_name": "ada", "full_name": "Ada"})
    user_update(db, uid, {"user_name": "Lovelace", "full_name": "Ada Lovelace"})
    assert profile(db, uid) == ("Lovelace", "Ada Lovelace")
    # A user who sent no name keeps the one she has.
    with db.connect() as conn:
        conn.execute(
            "update auth.users set raw_user_meta_data = raw_user_meta_data - 'user_name'"
            " where id = %s",
            (uid,),
        )
    assert profile(db, uid) == ("Lovelace", "Ada Lovelace")
    assert failures(db) == 0


@pytest.mark.parametrize("name", list(REJECTED), ids=lambda n: n.encode("unicode_escape")[:24])
def test_a_rejected_username_stays_out_and_the_other_columns_still_sync(
    installed: TestDB, name: str
) -> None:
    db = following(installed)
    uid = db.signup({"user_name": "grace", "full_name": "Grace"})
    user_update(db, uid, {"user_name": name, "full_name": "Grace Hopper"})
    stored, full_name = profile(db, uid)
    assert full_name == "Grace Hopper"
    assert stored == (REJECTED[name] or "grace")
    assert clean(stored) and len(stored) <= 64
    # The drift finder agrees: a rejected name is no drift to repair again and again.
    drift = db.scalar("select profileguard.find_drift(array[%s]::uuid[])", (uid,))
    assert drift["drift"] == []
    assert failures(db) == 0


def test_a_taken_name_is_not_followed(installed: TestDB) -> None:
    db = following(installed)
    holder = db.signup({"user_name": "torvalds"})
    uid = db.signup({"user_name": "linus", "full_name": "Linus"})
    user_update(db, uid, {"user_name": "torvalds", "full_name": "Linus T."})
    assert profile(db, uid) == ("linus", "Linus T.")
    assert profile(db, holder)[0] == "torvalds"
    # Her own name, written again in another case, is hers (no collision with herself).
    user_update(db, uid, {"user_name": "Linus"})
    assert profile(db, uid)[0] == "Linus"
    assert failures(db) == 0


def test_a_name_a_user_typed_follows_with_the_suffix_a_sign_up_gives(installed: TestDB) -> None:
    """An email sign-up's name is the user's own word: it follows as a sign-up would give it,
    with the key's suffix; a provider's name follows plainly."""
    db = following(installed)
    mail, oauth = uuid.uuid4(), uuid.uuid4()
    with db.connect() as conn:
        for uid, provider in ((mail, "email"), (oauth, "github")):
            conn.execute(
                "insert into auth.users (id, aud, role, raw_user_meta_data, raw_app_meta_data)"
                " values (%s, 'authenticated', 'authenticated', '{}', %s)",
                (uid, json.dumps({"provider": provider})),
            )
    user_update(db, mail, {"user_name": "hopper", "full_name": "G"})
    user_update(db, oauth, {"user_name": "octocat", "full_name": "O"})
    assert profile(db, mail) == (f"hopper_{key_hash(mail)}", "G")
    assert profile(db, oauth) == ("octocat", "O")
    user_update(db, oauth, {"user_name": "\u0430dmin", "full_name": "O2"})
    assert profile(db, oauth) == ("octocat", "O2")


def test_the_worker_path_applies_the_same_rule(installed: TestDB) -> None:
    """sync_profiles outside the trigger (the worker's drift repair) gives the same result."""
    db = following(installed)
    uid = db.signup({"user_name": "joan", "full_name": "Joan"})
    set_enabled(db.settings, False)
    user_update(db, uid, {"user_name": "\u202eadmin", "full_name": "Joan C."})
    set_enabled(db.settings, True)
    assert profile(db, uid) == ("joan", "Joan")
    written = db.scalar("select profileguard.sync_profiles(array[%s]::uuid[], 'drift')", (uid,))
    assert written == 1
    assert profile(db, uid) == ("joan", "Joan C.")


def test_a_signed_in_user_cannot_write_a_username(installed: TestDB) -> None:
    """The created table grants authenticated no UPDATE on username: a reserved, confusable,
    bidi or control-character name is refused whole, the columns users may edit stay
    writable."""
    uid = installed.signup({"user_name": "mallory", "full_name": "Mallory"})
    for name in ("admin", "torvalds", "\u0430dmin", "\u202eevil\u200b", "x\x07y", LONG):
        statement = sql.SQL("update public.profiles set username = {} where id = {}").format(
            sql.Literal(name), sql.Literal(str(uid))
        )
        assert denied(installed, "authenticated", statement, uid)
    with as_client(installed, "authenticated", uid) as conn:
        assert conn.execute("update public.profiles set full_name = 'M'").rowcount == 1
    assert profile(installed, uid) == ("mallory", "Mallory")

"""A constraint added to the profile table after install: the worker plans the mapping again and
re-creates the generated functions itself, or, where the install is managed by migrations or its
role may not, leaves them and turns the verdict degraded naming the command."""

from __future__ import annotations

import uuid
from typing import Any

from conftest import TestDB
from test_cli import cli
from test_worker import has_profile

from profileguard.repair import Worker

FORMAT = "alter table public.profiles add constraint app_username_format check (username !~ '[.]')"


def username(db: TestDB, uid: uuid.UUID) -> Any:
    return db.scalar("select username from public.profiles where id = %s", (uid,))


def stale(db: TestDB) -> Any:
    return db.scalar("select mapping_stale from profileguard.catalog_seen")


def health(db: TestDB) -> dict[str, Any]:
    return dict(db.scalar("select profileguard.health()"))


def mapping_check(db: TestDB) -> dict[str, Any]:
    return next(c for c in health(db)["checks"] if c["name"] == "mapping")


def test_a_check_added_after_install_is_planned_in_by_the_worker(installed: TestDB) -> None:
    worker = Worker(installed.settings)
    assert worker.heal()["mapping"] == "current"  # the first look plans: nothing to change
    with installed.connect() as conn:
        conn.execute(FORMAT)
    # Planned at install, the mapping offers the name as given: the new CHECK rejects it.
    before = installed.signup({"user_name": "ada.lovelace"})
    assert not has_profile(installed, before)

    looked = worker.heal()
    assert looked["catalog_changed"] is True
    assert looked["mapping"] == "replanned"
    assert stale(installed) is None
    assert worker.run_once().repaired == 1
    assert has_profile(installed, before)
    assert username(installed, before) is None or "." not in username(installed, before)
    # New sign-ups pass the CHECK in the trigger itself; a name it allows is kept.
    after = installed.signup({"user_name": "grace.hopper"})
    assert has_profile(installed, after)
    plain = installed.signup({"user_name": "linus"})
    assert username(installed, plain) == "linus"
    assert (
        installed.scalar(
            "select count(*) from profileguard.failures where user_id in (%s, %s)",
            (str(after), str(plain)),
        )
        == 0
    )
    assert worker.heal()["mapping"] == "current"
    assert mapping_check(installed)["active"] is False
    # One re-plan, recorded as the worker's.
    assert (
        installed.scalar(
            "select count(*) from profileguard.events where kind = 'config' and source = 'worker'"
        )
        == 1
    )


def test_an_install_managed_by_migrations_is_left_to_them_and_degraded(db: TestDB) -> None:
    rendered = cli(db, "sql", "--create-profile-table")
    assert rendered.returncode == 0, rendered.stderr
    with db.connect_admin() as conn:
        conn.execute(rendered.stdout)
    worker = Worker(db.settings)
    assert worker.heal()["mapping"] == "current"
    with db.connect() as conn:
        conn.execute(FORMAT)
    uid = db.signup({"user_name": "ada.lovelace"})
    assert worker.heal()["mapping"] == "stale"
    reason = stale(db)
    assert "profileguard sql" in reason and "on_identity_insert" in reason
    check = mapping_check(db)
    assert check["active"] is True and check["verdict"] == "degraded"
    assert health(db)["status"] == "degraded"
    # Nothing was re-created: the functions are still those of the applied migration.
    assert not has_profile(db, uid)
    # The next migration, rendered and applied, brings them in step; the worker clears the mark.
    again = cli(db, "sql")
    assert again.returncode == 0, again.stderr
    with db.connect_admin() as conn:
        conn.execute(again.stdout)
    looked = worker.heal()
    assert looked["mapping"] == "current"
    assert stale(db) is None
    assert mapping_check(db)["active"] is False


def test_a_unique_index_added_after_install_shares_the_lock_budget_once_planned_in(
    installed: TestDB,
) -> None:
    # One more unique index: one more lock wait a sign-up may meet, so a shorter wait each (the
    # SET clause changes, not the body).
    def per_wait() -> str:
        config = installed.scalar(
            "select proconfig from pg_proc"
            " where oid = 'profileguard.on_identity_insert()'::regprocedure"
        )
        return next(c for c in config if c.startswith("lock_timeout="))

    worker = Worker(installed.settings)
    assert worker.heal()["mapping"] == "current"
    before = per_wait()
    with installed.connect() as conn:
        conn.execute("create unique index app_avatar_key on public.profiles (avatar_url)")
    assert worker.heal()["mapping"] == "replanned"
    assert per_wait() != before
    assert worker.heal()["mapping"] == "current"

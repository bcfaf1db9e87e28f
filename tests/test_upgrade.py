"""Upgrades: installing an older schema and upgrading gives the same catalog as a fresh install.

"Older" is every earlier version k: profileguard installed with only migrations 1..k (and the
functions generated at that point), then `profileguard upgrade` with the full package. The
number of migrations is not fixed here, so the test grows with each new migration.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TestDB, as_of, drop_db, scratch_db
from test_cli import cli

from profileguard import sql as sqlfiles
from profileguard.install import install, pending_migrations, upgrade
from profileguard.installation import schema_version

_names = itertools.count()

# Everything profileguard owns or changes, as text that does not depend on oids or timing.
SNAPSHOT = {
    "relations": """
        select c.relname, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
               coalesce(c.relacl::text, '')
        from pg_class c
        where c.relnamespace = 'profileguard'::regnamespace or c.oid = 'public.profiles'::regclass
    """,
    "columns": """
        select c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity::text,
               a.attgenerated::text, coalesce(a.attacl::text, '')
        from pg_attribute a
        join pg_class c on c.oid = a.attrelid
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where (c.relnamespace = 'profileguard'::regnamespace
               or c.oid = 'public.profiles'::regclass)
          and a.attnum > 0 and not a.attisdropped
    """,
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        from pg_constraint
        where connamespace = 'profileguard'::regnamespace
           or conrelid = 'public.profiles'::regclass
    """,
    "indexes": """
        select schemaname, tablename, indexname, indexdef from pg_indexes
        where schemaname = 'profileguard' or (schemaname, tablename) = ('public', 'profiles')
    """,
    "functions": """
        select p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.prosecdef,
               coalesce(p.proconfig::text, ''), coalesce(p.proacl::text, ''),
               pg_get_userbyid(p.proowner)
        from pg_proc p where p.pronamespace = 'profileguard'::regnamespace
    """,
    "views": """
        select viewname, definition from pg_views where schemaname = 'profileguard'
    """,
    "policies": """
        select schemaname, tablename, policyname, permissive, roles::text, cmd,
               coalesce(qual, ''), coalesce(with_check, '')
        from pg_policies where schemaname in ('profileguard', 'public')
    """,
    "triggers": """
        select tgrelid::regclass::text, tgname, tgenabled::text, pg_get_triggerdef(oid)
        from pg_trigger
        where not tgisinternal
          and (tgrelid in ('auth.users'::regclass, 'public.profiles'::regclass)
               or tgrelid in (select oid from pg_class
                              where relnamespace = 'profileguard'::regnamespace))
    """,
    "schema": """
        select n.nspname, coalesce(n.nspacl::text, ''), pg_get_userbyid(n.nspowner),
               coalesce((select string_agg(d.defaclobjtype::text || ':' || d.defaclacl::text, ',')
                         from pg_default_acl d where d.defaclnamespace = n.oid), '')
        from pg_namespace n where n.nspname = 'profileguard'
    """,
    "migrations": "select version, name from profileguard.migrations",
    "settings": """
        select enabled, strict, identity_table, identity_key, profile_table, profile_key,
               config::text, package_version
        from profileguard.settings
    """,
}


def snapshot(db: TestDB) -> dict[str, list[tuple[Any, ...]]]:
    with db.connect() as conn:
        return {
            name: sorted(conn.execute(query).fetchall(), key=repr)
            for name, query in SNAPSHOT.items()
        }


@pytest.fixture
def fresh_db(server_dsn: str, template_db: str, installer: str) -> Iterator[TestDB]:
    """A second scratch database, like `db` (same installer), to compare against."""
    name = f"pg_upgrade_{os.getpid()}_{next(_names)}"
    yield scratch_db(server_dsn, template_db, name, installer)
    drop_db(server_dsn, name)


VERSIONS = [m.version for m in sqlfiles.migrations()]


@pytest.mark.parametrize("old_version", VERSIONS)
def test_install_old_then_upgrade_equals_fresh_install(
    db: TestDB, fresh_db: TestDB, old_version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = sqlfiles.migrations()
    old = tuple(m for m in every if m.version <= old_version)
    with monkeypatch.context() as patch:
        as_of(patch, old)
        first = install(db.settings, create_profile_table=True)
    assert first.version_after == old_version
    with db.connect() as conn:
        assert schema_version(conn) == old_version
        assert [m.version for m in pending_migrations(conn)] == [
            m.version for m in every if m.version > old_version
        ]
    uid = db.signup({"full_name": "Before Upgrade"})

    result = cli(db, "upgrade", "--json")  # the real command, in one transaction
    assert result.returncode == 0, result.stderr
    upgraded = json.loads(result.stdout)
    assert upgraded["version_before"] == old_version
    assert upgraded["version_after"] == every[-1].version

    install(fresh_db.settings, create_profile_table=True)
    before, after = snapshot(db), snapshot(fresh_db)
    for part in SNAPSHOT:
        assert before[part] == after[part], part
    # Data kept, and the upgraded install still works.
    assert (
        db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "Before Upgrade"
    )
    uid = db.signup({"full_name": "After Upgrade"})
    assert (
        db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "After Upgrade"
    )


def test_failed_upgrade_changes_nothing(db: TestDB, monkeypatch: pytest.MonkeyPatch) -> None:
    every = sqlfiles.migrations()
    with monkeypatch.context() as patch:
        as_of(patch, every[:1])
        install(db.settings, create_profile_table=True)
    before = snapshot(db)
    broken = (*every, sqlfiles.Migration(9999, "broken", "select 1/0;"))
    monkeypatch.setattr(sqlfiles, "migrations", lambda: broken)
    with pytest.raises(Exception, match="division by zero"):
        upgrade(db.settings)
    assert snapshot(db) == before


def test_migrations_land_in_any_order(db: TestDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that has a later migration but not an earlier one gets the earlier one."""
    every = sqlfiles.migrations()
    assert len(every) >= 3, "needs three migrations"
    skipped = every[-2]
    with monkeypatch.context() as patch:
        as_of(patch, tuple(m for m in every if m is not skipped))
        install(db.settings, create_profile_table=True)
    with db.connect() as conn:
        assert [m.version for m in pending_migrations(conn)] == [skipped.version]
    result = upgrade(db.settings)
    assert result.changed
    with db.connect() as conn:
        assert pending_migrations(conn) == []

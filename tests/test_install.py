"""install / upgrade / uninstall / enable / describe, and the privileges the install leaves."""

from __future__ import annotations

import psycopg
import pytest

from profileguard import __version__
from profileguard import sql as sqlfiles
from profileguard.errors import ConfigError, NotInstalledError
from profileguard.install import describe, install, set_enabled, uninstall, upgrade
from profileguard.installation import TRIGGER_NAME

PROFILEGUARD_FUNCTIONS = """
    select p.oid::regprocedure::text
    from pg_proc p
    where p.pronamespace = 'profileguard'::regnamespace
    order by 1
"""


def schema_exists(db) -> bool:
    return db.scalar("select exists (select from pg_namespace where nspname = 'profileguard')")


def trigger_count(db) -> int:
    return db.scalar("select count(*) from pg_trigger where tgname = %s", (TRIGGER_NAME,))


def rows(db, query: str, params=None) -> list[tuple]:
    with db.connect() as conn:
        return conn.execute(query, params).fetchall()


def execute(db, query: str, params=None) -> None:
    with db.connect() as conn:
        conn.execute(query, params)


def profile_of(db, uid):
    return db.scalar("select to_jsonb(p) from public.profiles p where p.id = %s", (uid,))


# --- install / uninstall ---------------------------------------------------------------------


def test_install_is_idempotent(installed):
    configs = installed.scalar("select count(*) from profileguard.events where kind = 'config'")
    result = install(installed.settings)
    assert result.changed is False
    assert result.created_profile_table is False
    # Nothing re-created on the users table: no lock taken on it.
    assert not any("create or replace trigger" in s for s in result.statements)
    assert result.locked_tables == []
    assert result.version_before == result.version_after == sqlfiles.latest_version()
    # No change → no new config event.
    assert (
        installed.scalar("select count(*) from profileguard.events where kind = 'config'")
        == configs
    )
    # Asking for the table again when it exists is fine too.
    again = install(installed.settings, create_profile_table=True)
    assert again.changed is False
    assert again.created_profile_table is False
    assert trigger_count(installed) == 1
    assert installed.scalar("select count(*) from profileguard.settings") == 1


def test_first_install_reports_change(db):
    result = install(db.settings, create_profile_table=True)
    assert result.changed is True
    assert result.created_profile_table is True
    assert result.version_before == 0
    assert result.version_after == sqlfiles.latest_version()
    assert db.scalar("select count(*) from profileguard.events where kind = 'config'") == 1


def test_reinstall_after_uninstall_keeps_profiles_and_users(installed):
    for i in range(5):
        installed.signup({"full_name": f"Person {i}", "user_name": f"person{i}"})
    users_query = "select to_jsonb(u) from auth.users u order by id"
    profiles_query = "select to_jsonb(p) from public.profiles p order by id"
    users_before = rows(installed, users_query)
    profiles_before = rows(installed, profiles_query)
    assert len(profiles_before) == 5

    assert uninstall(installed.settings) is True
    assert not schema_exists(installed)
    assert rows(installed, profiles_query) == profiles_before

    result = install(installed.settings)
    assert result.changed is True
    assert result.created_profile_table is False
    assert rows(installed, profiles_query) == profiles_before
    assert rows(installed, users_query) == users_before
    # And the reinstalled trigger works.
    uid = installed.signup({"user_name": "after_reinstall"})
    assert profile_of(installed, uid)["username"] == "after_reinstall"


def test_uninstall_removes_every_object_and_keeps_profiles(installed):
    uid = installed.signup({"full_name": "Kept"})
    assert trigger_count(installed) == 1
    defacl_before = installed.scalar("select count(*) from pg_default_acl")

    assert uninstall(installed.settings) is True

    assert not schema_exists(installed)
    assert trigger_count(installed) == 0
    assert (
        installed.scalar("select to_regprocedure('profileguard.ensure_profile(uuid,text)')") is None
    )
    # No function anywhere still named like ours, no dangling default ACLs.
    assert (
        installed.scalar(
            "select count(*) from pg_proc where proname in"
            " ('on_identity_insert', 'ensure_profile', 'create_profiles', 'record_failure',"
            "  'sqlstate_category')"
        )
        == 0
    )
    assert (
        installed.scalar(
            "select count(*) from pg_default_acl"
            " where defaclnamespace <> 0"
            " and defaclnamespace not in (select oid from pg_namespace)"
        )
        == 0
    )
    assert installed.scalar("select count(*) from pg_default_acl") <= defacl_before
    # The profile table and its data stay.
    assert installed.scalar("select to_regclass('public.profiles') is not null") is True
    assert profile_of(installed, uid)["full_name"] == "Kept"
    # Without the trigger, a new signup gets no profile.
    other = installed.signup({"full_name": "No trigger"})
    assert profile_of(installed, other) is None
    # Nothing left to remove.
    assert uninstall(installed.settings) is False


def test_dry_run_changes_nothing(db):
    result = install(db.settings, create_profile_table=True, dry_run=True)
    assert result.statements
    text = "\n".join(result.statements)
    assert "create schema if not exists profileguard" in text
    assert "create table" in text
    assert TRIGGER_NAME in text
    assert not schema_exists(db)
    assert db.scalar("select to_regclass('public.profiles')") is None
    assert trigger_count(db) == 0


def test_dry_run_on_installed_db_keeps_settings(installed):
    result = install(installed.settings, strict=True, dry_run=True)
    assert result.changed is True
    assert result.statements
    assert installed.scalar("select strict from profileguard.settings") is False
    assert describe(installed.settings)["strict"] is False


def test_create_profile_table_is_supabase_style(db):
    result = install(db.settings, create_profile_table=True)
    assert result.created_profile_table is True
    columns = [
        r[0]
        for r in rows(
            db,
            "select attname from pg_attribute where attrelid = 'public.profiles'::regclass"
            " and attnum > 0 and not attisdropped order by attnum",
        )
    ]
    assert columns == ["id", "username", "full_name", "avatar_url", "created_at", "updated_at"]
    assert db.scalar("select relrowsecurity from pg_class where oid = 'public.profiles'::regclass")
    policies = rows(
        db,
        "select policyname, cmd, roles::text[] from pg_policies"
        " where schemaname = 'public' and tablename = 'profiles' order by policyname",
    )
    assert policies == [
        ("profiles_select_own", "SELECT", ["authenticated"]),
        ("profiles_update_own", "UPDATE", ["authenticated"]),
    ]
    # The foreign key cascades from auth.users.
    assert (
        db.scalar(
            "select confdeltype from pg_constraint"
            " where conrelid = 'public.profiles'::regclass and contype = 'f'"
        )
        == "c"
    )


def test_own_row_policies_work_for_authenticated(installed):
    mine = installed.signup({"full_name": "Me"})
    other = installed.signup({"full_name": "Other"})
    with installed.connect(autocommit=False) as conn:
        conn.execute("set local role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (f'{{"sub": "{mine}", "role": "authenticated"}}',),
        )
        visible = [r[0] for r in conn.execute("select id from public.profiles").fetchall()]
        updated = conn.execute(
            "update public.profiles set full_name = 'Changed' where id in (%s, %s)", (mine, other)
        ).rowcount
        conn.commit()
    assert visible == [mine]
    assert updated == 1
    assert profile_of(installed, other)["full_name"] == "Other"


def test_missing_profile_table_without_flag_is_config_error(db):
    with pytest.raises(ConfigError) as info:
        install(db.settings)
    assert "--create-profile-table" in str(info.value)
    assert not schema_exists(db)
    assert db.scalar("select to_regclass('public.profiles')") is None


def test_adopts_existing_custom_profile_table(db):
    execute(
        db,
        "create table public.profiles ("
        " id uuid primary key references auth.users (id) on delete cascade,"
        " full_name text)",
    )
    result = install(db.settings)
    assert result.created_profile_table is False
    notes = "\n".join(result.notes)
    assert "avatar_url" in notes
    assert "username" in notes
    uid = db.signup({"full_name": "Ada Lovelace", "avatar_url": "x", "user_name": "ada"})
    assert profile_of(db, uid) == {"id": str(uid), "full_name": "Ada Lovelace"}
    assert db.scalar("select count(*) from profileguard.failures") == 0


def test_set_enabled_turns_trigger_off_and_on(installed):
    assert set_enabled(installed.settings, False) is True
    off = installed.signup({"full_name": "Off"})
    assert profile_of(installed, off) is None
    assert describe(installed.settings)["enabled"] is False
    # Switching off twice is a no-op that reports the previous state.
    assert set_enabled(installed.settings, False) is False

    assert set_enabled(installed.settings, True) is False
    on = installed.signup({"full_name": "On"})
    assert profile_of(installed, on)["full_name"] == "On"
    assert profile_of(installed, off) is None  # no retroactive creation
    assert describe(installed.settings)["enabled"] is True
    assert installed.scalar(
        "select array_agg(message order by id) from profileguard.events"
        " where kind = 'config' and source = 'cli'"
    ) == ["disabled", "enabled"]


def test_flag_changes_reach_sessions_that_already_signed_users_up(installed):
    """The flags are constants folded into the trigger's cached plans: a change (by the CLI, by
    install, or by an operator's UPDATE of the settings row) must reach a session that has
    already run the trigger, at its next statement."""
    with installed.connect() as session:
        first = installed.signup({"full_name": "Before"}, conn=session)
        assert profile_of(installed, first)["full_name"] == "Before"

        set_enabled(installed.settings, False)
        off = installed.signup({"full_name": "Off"}, conn=session)
        assert profile_of(installed, off) is None

        installed.scalar("update profileguard.settings set enabled = true returning enabled")
        on = installed.signup({"full_name": "On"}, conn=session)
        assert profile_of(installed, on)["full_name"] == "On"

        with installed.connect_admin() as admin:
            admin.execute(
                "alter table public.profiles add constraint no_one check (false) not valid"
            )
        install(installed.settings, strict=True)
        with pytest.raises(psycopg.errors.CheckViolation):
            installed.signup({"full_name": "Strict"}, conn=session)
        install(installed.settings, strict=False)
        lenient = installed.signup({"full_name": "Lenient"}, conn=session)
        assert profile_of(installed, lenient) is None
        assert (
            installed.scalar(
                "select count(*) from profileguard.failures where user_id = %s", (str(lenient),)
            )
            == 1
        )
    # The flags are not the profile table's catalog: turning profileguard off and on does not
    # count as a change that releases every backed-off user.
    version = installed.scalar("select profileguard.catalog_version()")
    set_enabled(installed.settings, False)
    set_enabled(installed.settings, True)
    assert installed.scalar("select profileguard.catalog_version()") == version


def test_set_enabled_not_installed(db):
    with pytest.raises(NotInstalledError):
        set_enabled(db.settings, False)


def test_describe(db):
    before = describe(db.settings)
    assert before["installed"] is False
    assert before["schema_version"] == 0
    assert before["upgrade_available"] is False
    assert before["package_version"] == __version__
    assert before["latest_schema_version"] == sqlfiles.latest_version()

    install(db.settings, create_profile_table=True)
    info = describe(db.settings)
    assert info["installed"] is True
    assert info["schema_version"] == sqlfiles.latest_version()
    assert info["enabled"] is True
    assert info["strict"] is False
    assert info["identity_table"] == "auth.users"
    assert info["profile_table"] == "public.profiles"
    assert info["installed_package_version"] == __version__
    assert info["upgrade_available"] is False
    assert isinstance(info["installed_at"], str)

    install(db.settings, strict=True)
    assert describe(db.settings)["strict"] is True


def test_upgrade_not_installed(db):
    with pytest.raises(NotInstalledError):
        upgrade(db.settings)
    assert not schema_exists(db)


def test_upgrade_installed_keeps_flags(installed):
    install(installed.settings, strict=True)
    set_enabled(installed.settings, False)
    result = upgrade(installed.settings)
    assert result.changed is False
    assert result.version_after == sqlfiles.latest_version()
    info = describe(installed.settings)
    assert info["strict"] is True
    assert info["enabled"] is False


# --- privileges --------------------------------------------------------------------------------


def test_functions_not_executable_by_clients(installed):
    functions = [r[0] for r in rows(installed, PROFILEGUARD_FUNCTIONS)]
    assert "profileguard.ensure_profile(uuid,text)" in functions
    assert "profileguard.on_identity_insert()" in functions
    for role in ("anon", "authenticated"):
        for function in functions:
            assert (
                installed.scalar(
                    "select has_function_privilege(%s, %s, 'execute')", (role, function)
                )
                is False
            ), (role, function)
    # PUBLIC: no ACL entry for grantee 0 (a NULL proacl would mean the default: PUBLIC execute).
    public_grants = rows(
        installed,
        "select p.oid::regprocedure::text from pg_proc p,"
        " aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
        " where p.pronamespace = 'profileguard'::regnamespace and a.grantee = 0",
    )
    assert public_grants == []
    assert installed.scalar("select has_schema_privilege('anon', 'profileguard', 'usage')") is False
    assert (
        installed.scalar(
            "select has_table_privilege('authenticated', 'profileguard.events', 'select')"
        )
        is False
    )


def test_every_function_searches_the_temporary_schema_last(installed):
    """Definer or not: `search_path = ''` would still search pg_temp first for types and tables."""
    functions = rows(
        installed,
        "select p.oid::regprocedure::text, p.prosecdef, p.proconfig from pg_proc p"
        " where p.pronamespace = 'profileguard'::regnamespace",
    )
    assert {
        "profileguard.on_identity_insert()",
        "profileguard.ensure_profile(uuid,text)",
        "profileguard.create_profiles(uuid[],text)",
        "profileguard.trigger_enabled()",
    } <= {name for name, _, _ in functions}
    assert sum(definer for _, definer, _ in functions) >= 20
    for name, _, config in functions:
        assert config is not None and "search_path=pg_catalog, pg_temp" in config, name


def test_service_role_may_ensure_profiles(installed):
    assert (
        installed.scalar(
            "select has_function_privilege('service_role',"
            " 'profileguard.ensure_profile(uuid,text)', 'execute')"
        )
        is True
    )
    set_enabled(installed.settings, False)
    uid = installed.signup({"full_name": "Via service role"})
    set_enabled(installed.settings, True)
    with installed.connect(autocommit=False) as conn:
        conn.execute("set local role service_role")
        created, profile = conn.execute(
            "select created, profile from profileguard.ensure_profile(%s)", (uid,)
        ).fetchone()
        conn.commit()
    assert created is True
    assert profile["full_name"] == "Via service role"


def test_anon_cannot_call_ensure_profile(installed):
    uid = installed.signup({})
    with installed.connect() as conn:
        conn.execute("set role anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from profileguard.ensure_profile(%s)", (uid,))

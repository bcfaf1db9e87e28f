"""Installation: what is installed, read from profileguard.settings and the catalog."""

from __future__ import annotations

import pytest
from conftest import TestDB, as_of

from profileguard import sql as sqlfiles
from profileguard.errors import NotInstalledError
from profileguard.install import install, set_enabled
from profileguard.installation import (
    Installation,
    require_current,
    require_version,
    schema_version,
)


def test_nothing_installed(db: TestDB) -> None:
    with db.connect() as conn:
        assert Installation.read(conn) is None
        assert schema_version(conn) == 0
        with pytest.raises(NotInstalledError) as info:
            Installation.require(conn)
        assert info.value.hint == "run: profileguard install"
        with pytest.raises(NotInstalledError):
            require_version(conn)


def test_reads_the_installed_row_and_key_type(installed: TestDB) -> None:
    set_enabled(installed.settings, False)
    with installed.connect() as conn:
        found = Installation.require(conn)
        assert found.version == sqlfiles.latest_version() == require_version(conn)
        assert (str(found.identity), found.identity.key) == ("auth.users", "id")
        assert (str(found.profile), found.profile.key) == ("public.profiles", "id")
        assert found.key_type == "uuid"
        assert (found.enabled, found.strict) == (False, False)
        assert found.config["package_version"] == found.package_version
        assert found.identity_sql.as_string(conn) == '"auth"."users"'
        assert found.parts()["key_type"].as_string(conn) == "uuid"
        assert require_current(conn, missing="the figures") == found.version


def test_a_schema_behind_the_package_names_the_upgrade(
    db: TestDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = sqlfiles.migrations()
    with monkeypatch.context() as patch:
        as_of(patch, every[:-1])
        install(db.settings, create_profile_table=True)
    with db.connect() as conn, pytest.raises(NotInstalledError, match="the figures") as info:
        require_current(conn, missing="the figures")
    assert str(every[-1].version) in str(info.value)
    assert info.value.hint == "run: profileguard upgrade"

"""Settings: defaults, profileguard.toml, the environment, and every way a bad value is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TestDB
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from profileguard.config import (
    DEFAULT_MAPPING,
    Settings,
    Source,
    TableRef,
    load_settings,
    parse_mapping,
)
from profileguard.errors import ConfigError, ExitCode, ProfileGuardError
from profileguard.install import install

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


@pytest.fixture(autouse=True)
def _no_stray_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_settings() looks for ./profileguard.toml: run every test where there is none."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "profileguard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return info.value


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_without_file_or_env() -> None:
    s = load_settings(env={})
    assert s.database_url is None
    assert (s.identity.schema, s.identity.name, s.identity.key) == ("auth", "users", "id")
    assert (s.profile.schema, s.profile.name, s.profile.key) == ("public", "profiles", "id")
    assert s.mapping_is_default is True
    assert set(s.mapping) == set(DEFAULT_MAPPING)
    assert [str(x) for x in s.mapping["username"]] == list(DEFAULT_MAPPING["username"])
    # Nothing is derived from the email (or the phone) unless configured.
    assert all(src.column == "raw_user_meta_data" for srcs in s.mapping.values() for src in srcs)
    assert s.preset == "default"
    assert s.username_column == "username"
    assert s.strict is False
    assert s.enabled is True
    assert s.retry_attempts == 3
    assert s == Settings()


def test_describe_is_json_friendly_and_has_no_url() -> None:
    s = load_settings(env={"DATABASE_URL": "postgresql://u:secret@h/db"})
    d = s.describe()
    assert d["identity_table"] == "auth.users"
    assert d["profile_table"] == "public.profiles"
    assert d["mapping"]["avatar_url"] == list(DEFAULT_MAPPING["avatar_url"])
    assert "secret" not in repr(d)


# --- the file ---------------------------------------------------------------------------------


FULL_FILE = """
[database]
url = "postgresql://file@localhost/filedb"

[identity]
table = "app.members"
key = "member_id"

[profile]
table = "people"
key = "member_id"
username_column = "handle"
strict = true

[mapping]
display_name = ["meta.display", "meta.names.first", "email|localpart"]
handle = "login|lower"

[client]
enabled = false
retry_attempts = 7
"""


def test_file_parsing(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL_FILE), env={})
    assert s.database_url == "postgresql://file@localhost/filedb"
    assert s.identity == TableRef("app", "members", "member_id")
    # A bare profile table name lands in public.
    assert s.profile == TableRef("public", "people", "member_id")
    assert s.username_column == "handle"
    assert s.strict is True
    assert s.enabled is False
    assert s.retry_attempts == 7
    assert s.mapping_is_default is False
    assert dict(s.mapping) == {
        "display_name": (
            Source("meta", ("display",)),
            Source("meta", ("names", "first")),
            Source("email", (), "localpart"),
        ),
        "handle": (Source("login", (), "lower"),),
    }
    assert s.conninfo() == "postgresql://file@localhost/filedb"


def test_preset_supabase_is_the_documented_handle_new_user(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[profile]\npreset = "supabase"\n'), env={})
    assert s.preset == "supabase"
    assert s.mapping_is_default is True  # columns the table lacks are skipped, as by default
    assert dict(s.mapping) == {
        "full_name": (Source("raw_user_meta_data", ("full_name",)),),
        "avatar_url": (Source("raw_user_meta_data", ("avatar_url",)),),
    }
    assert s.describe()["preset"] == "supabase"
    default = load_settings(write(tmp_path, '[profile]\npreset = "default"\n'), env={})
    assert default.configured == {"mapping"}  # written out: it wins over a learned mapping
    assert replace(default, configured=frozenset()) == Settings()


def test_preset_errors_name_the_choices(tmp_path: Path) -> None:
    error = config_error(path=write(tmp_path, '[profile]\npreset = "firebase"\n'), env={})
    assert "profile.preset" in error.message and "supabase" in str(error.hint)
    error = config_error(path=write(tmp_path, "[profile]\npreset = [1]\n"), env={})
    assert "is not a preset" in error.message
    both = '[profile]\npreset = "supabase"\n[mapping]\nfull_name = "raw_user_meta_data.name"\n'
    error = config_error(path=write(tmp_path, both), env={})
    assert "both set" in error.message and "remove" in str(error.hint)


def test_a_written_mapping_has_no_preset(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[mapping]\nusername = "email|localpart"\n'), env={})
    assert (s.preset, s.mapping_is_default) == (None, False)
    assert s.mapping["username"] == (Source("email", (), "localpart"),)


def test_file_found_in_current_directory(tmp_path: Path) -> None:
    write(tmp_path, '[profile]\ntable = "public.users_profiles"\n')
    assert str(load_settings(env={}).profile) == "public.users_profiles"


def test_file_named_by_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[identity]\ntable = "crm.users"\n', name="other.toml")
    s = load_settings(env={"PROFILEGUARD_CONFIG": str(path)})
    assert str(s.identity) == "crm.users"


def test_username_column_can_be_switched_off(tmp_path: Path) -> None:
    assert (
        load_settings(write(tmp_path, '[profile]\nusername_column = ""\n'), env={}).username_column
        is None
    )
    assert (
        load_settings(
            write(tmp_path, "[profile]\nusername_column = false\n"), env={}
        ).username_column
        is None
    )


def test_source_round_trips_through_str() -> None:
    texts = ("email", "email|lower", "raw_user_meta_data.a.b", "raw_user_meta_data.x|localpart")
    for text in texts:
        assert str(Source.parse(text, setting="mapping.c")) == text


# --- the environment wins over the file ---------------------------------------------------------


def test_env_wins_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_FILE)
    s = load_settings(
        path,
        env={
            "DATABASE_URL": "postgresql://env@localhost/envdb",
            "PROFILEGUARD_ENABLED": "1",
            "PROFILEGUARD_STRICT": "off",
            "PROFILEGUARD_RETRY_ATTEMPTS": "2",
            "PROFILEGUARD_IDENTITY_TABLE": "auth.users",
            "PROFILEGUARD_IDENTITY_KEY": "id",
            "PROFILEGUARD_PROFILE_TABLE": "public.profiles",
            "PROFILEGUARD_PROFILE_KEY": "id",
        },
    )
    assert s.database_url == "postgresql://env@localhost/envdb"
    assert s.enabled is True
    assert s.strict is False
    assert s.retry_attempts == 2
    assert s.identity == TableRef("auth", "users", "id")
    assert s.profile == TableRef("public", "profiles", "id")
    # What the environment does not set still comes from the file.
    assert s.username_column == "handle"
    assert "display_name" in s.mapping


def test_profileguard_database_url_wins_over_database_url(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql://generic@h/db",
        "PROFILEGUARD_DATABASE_URL": "postgresql://specific@h/db",
    }
    assert load_settings(write(tmp_path, FULL_FILE), env=env).database_url == (
        "postgresql://specific@h/db"
    )
    # An explicit override (CLI flag) wins over both.
    assert load_settings(env=env, database_url="postgresql://flag@h/db").database_url == (
        "postgresql://flag@h/db"
    )


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("0", False),
        ("false", False),
        ("No", False),
        (" OFF ", False),
        ("1", True),
        ("true", True),
        ("YES", True),
        ("on", True),
    ],
)
def test_enabled_words(word: str, expected: bool) -> None:
    assert load_settings(env={"PROFILEGUARD_ENABLED": word}).enabled is expected


def test_overrides_win_and_none_is_ignored() -> None:
    s = load_settings(env={"PROFILEGUARD_ENABLED": "1"}, enabled=False, strict=None)
    assert s.enabled is False
    assert s.strict is False
    assert s.with_overrides(retry_attempts=5, strict=None).retry_attempts == 5


# --- bad configuration: ConfigError naming the key, with a hint ---------------------------------


@pytest.mark.parametrize(
    "table",
    [
        "public.profiles; drop table x",
        "a.b.c",
        "public.",
        ".profiles",
        "1profiles",
        "pro-files",
        'public."profiles"',
        "x" * 64,
        "public.profiles\n",
        "profiles\x00",
        "prófiles",
    ],
)
def test_bad_profile_table_is_refused(table: str) -> None:
    err = config_error(env={"PROFILEGUARD_PROFILE_TABLE": table})
    assert "profile.table" in err.message
    assert err.hint and "profile.table" in err.hint


def test_empty_table_in_file_is_refused(tmp_path: Path) -> None:
    err = config_error(path=write(tmp_path, '[identity]\ntable = ""\n'), env={})
    assert "identity.table" in err.message
    assert err.hint and "identity.table" in err.hint


@pytest.mark.parametrize("value", ["5", '["auth.users"]', "{ a = 1 }", "true"])
def test_non_string_table_in_file_is_refused(tmp_path: Path, value: str) -> None:
    err = config_error(path=write(tmp_path, f"[identity]\ntable = {value}\n"), env={})
    assert "identity.table" in err.message


@pytest.mark.parametrize("key", ["id; drop table x", "", "user id", "a.b", "x" * 64])
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    err = config_error(path=write(tmp_path, f'[identity]\nkey = "{key}"\n'), env={})
    assert "identity.key" in err.message
    assert err.hint and "identity.key" in err.hint


@pytest.mark.parametrize("key", ["id; drop table x", "user id", "a.b", "x" * 64, "id\n"])
def test_bad_keys_from_env_are_refused(key: str) -> None:
    err = config_error(env={"PROFILEGUARD_PROFILE_KEY": key})
    assert "profile.key" in err.message
    assert err.hint and "profile.key" in err.hint


def test_bad_username_column(tmp_path: Path) -> None:
    err = config_error(path=write(tmp_path, '[profile]\nusername_column = "user name"\n'), env={})
    assert "profile.username_column" in err.message
    assert err.hint and "profile.username_column" in err.hint


@pytest.mark.parametrize(
    ("body", "fragment", "hint_fragment"),
    [
        ('full_name = ["email|upper"]', "unknown transform", "localpart"),
        ('full_name = ["email|localpart|lower"]', "unknown transform", "lower"),
        ('full_name = ["raw_user_meta_data..name"]', "JSON key", "'.'"),
        ('full_name = ["raw_user_meta_data.na$me"]', "JSON key", "'$'"),
        ('full_name = ["raw_user_meta_data.' + "k" * 201 + '"]', "JSON key", "1-200"),
        ('full_name = ["raw_user_meta_data."]', "JSON key", "1-200"),
        ('full_name = [""]', "is not a source", "column"),
        ("full_name = [5]", "is not a source", "column"),
        ('full_name = ["bad col.name"]', "not a valid SQL identifier", "mapping.full_name"),
        ('full_name = ["|localpart"]', "not a valid SQL identifier", "mapping.full_name"),
        ("full_name = 5", "non-empty list", "full_name = ["),
        ("full_name = []", "non-empty list", "full_name = ["),
        ("full_name = { a = 1 }", "non-empty list", "full_name = ["),
        ('"full name" = ["email"]', "not a valid SQL identifier", "mapping.full name"),
    ],
)
def test_bad_sources_are_refused(
    tmp_path: Path, body: str, fragment: str, hint_fragment: str
) -> None:
    err = config_error(path=write(tmp_path, f"[mapping]\n{body}\n"), env={})
    assert "mapping." in err.message
    assert fragment in err.message
    assert err.hint and hint_fragment in err.hint


@pytest.mark.parametrize("text", ["mapping = 5\n", "[mapping]\n", 'mapping = "email"\n'])
def test_mapping_must_be_a_non_empty_table(tmp_path: Path, text: str) -> None:
    err = config_error(path=write(tmp_path, text), env={})
    assert err.message.startswith("mapping")
    assert err.hint and "full_name = [" in err.hint


def test_parse_mapping_accepts_a_single_string() -> None:
    assert parse_mapping({"full_name": "raw_user_meta_data.name"}) == {
        "full_name": (Source("raw_user_meta_data", ("name",)),)
    }


@pytest.mark.parametrize("word", ["maybe", "2", "", "tru", "-1"])
def test_bad_enabled_env(word: str) -> None:
    err = config_error(env={"PROFILEGUARD_ENABLED": word})
    assert "PROFILEGUARD_ENABLED" in err.message
    assert err.hint and "true or false" in err.hint


@pytest.mark.parametrize("value", ['"maybe"', "2", "1.5", "[true]"])
def test_bad_booleans_in_file(tmp_path: Path, value: str) -> None:
    err = config_error(path=write(tmp_path, f"[profile]\nstrict = {value}\n"), env={})
    assert "profile.strict" in err.message
    err = config_error(path=write(tmp_path, f"[client]\nenabled = {value}\n"), env={})
    assert "client.enabled" in err.message


@pytest.mark.parametrize("value", ["0", "21", "-3", "three", "", "2.5", "1e3", "true"])
def test_bad_retry_attempts_env(value: str) -> None:
    err = config_error(env={"PROFILEGUARD_RETRY_ATTEMPTS": value})
    assert "PROFILEGUARD_RETRY_ATTEMPTS" in err.message
    assert err.hint and "between 1 and 20" in err.hint


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("retry_attempts = 0", "client.retry_attempts"),
        ("retry_attempts = true", "client.retry_attempts"),
        ("retry_attempts = 2.5", "client.retry_attempts"),
        ('retry_attempts = "lots"', "client.retry_attempts"),
        ("connect_timeout = 0", "client.connect_timeout"),
        ("retry_base_seconds = -1", "client.retry_base_seconds"),
        ('retry_cap_seconds = "nan"', "client.retry_cap_seconds"),
        ("retry_cap_seconds = inf", "client.retry_cap_seconds"),
    ],
)
def test_bad_numbers_in_file(tmp_path: Path, line: str, key: str) -> None:
    err = config_error(path=write(tmp_path, f"[client]\n{line}\n"), env={})
    assert key in err.message
    assert err.hint and key in err.hint


def test_good_numbers_in_file(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            "[client]\nretry_attempts = 20\nretry_base_seconds = 0\n"
            "retry_cap_seconds = 0.5\nconnect_timeout = 3\n",
        ),
        env={},
    )
    assert (s.retry_attempts, s.retry_base_seconds, s.retry_cap_seconds, s.connect_timeout) == (
        20,
        0.0,
        0.5,
        3,
    )


@pytest.mark.parametrize("section", ["database", "identity", "profile", "client"])
def test_section_must_be_a_table(tmp_path: Path, section: str) -> None:
    err = config_error(path=write(tmp_path, f'{section} = "x"\n'), env={})
    assert f"[{section}]" in err.message
    assert err.hint and f"[{section}]" in err.hint


@pytest.mark.parametrize(
    ("text", "named", "nearest"),
    [
        ('[profile]\ntabel = "people"\n', "profile.tabel", "profile.table"),
        ("[profile]\nusername_colum = 'h'\n", "profile.username_colum", "profile.username_column"),
        ("[profile]\nstrict_mode = true\n", "profile.strict_mode", "profile.strict"),
        ('[database]\nulr = "postgresql://x/db"\n', "database.ulr", "database.url"),
        ('[identity]\nkeys = "id"\n', "identity.keys", "identity.key"),
        ("[client]\nretry_attempt = 3\n", "client.retry_attempt", "client.retry_attempts"),
        ('[supabase]\nurls = "https://x.supabase.co"\n', "supabase.urls", "supabase.url"),
        ("[username]\nmin_len = 3\n", "username.min_len", "username.min_length"),
        ('[delete]\nredacted = ["full_name"]\n', "delete.redacted", "delete.redact"),
        ("[alerts]\nrepair_slo = 30\n", "alerts.repair_slo", "alerts.repair_slo_seconds"),
        ('[profiles]\ntable = "people"\n', "[profiles]", "[profile]"),
        ("[alert]\nrepair_slo_seconds = 30\n", "[alert]", "[alerts]"),
        ('[maping]\nfull_name = "email"\n', "[maping]", "[mapping]"),
        ('url = "postgresql://x/db"\n', "url", "url in [database]"),
    ],
)
def test_unknown_keys_and_sections_are_refused_with_the_nearest_name(
    tmp_path: Path, text: str, named: str, nearest: str
) -> None:
    err = config_error(path=write(tmp_path, text), env={})
    assert named in err.message and "unknown" in err.message
    assert err.message.endswith(f"did you mean {nearest}?")
    assert err.hint and err.exit_code == ExitCode.USAGE


def test_an_unknown_key_without_a_near_one_lists_the_section(tmp_path: Path) -> None:
    err = config_error(path=write(tmp_path, "[client]\nparallelism = 4\n"), env={})
    assert err.message == "client.parallelism: unknown setting"
    assert err.hint and "retry_attempts" in err.hint and "connect_timeout" in err.hint
    err = config_error(path=write(tmp_path, "[observability]\nport = 1\n"), env={})
    assert err.message == "[observability]: unknown section"
    assert err.hint and "[alerts]" in err.hint and "[profile]" in err.hint


def test_the_service_role_key_is_never_read_from_the_file(tmp_path: Path) -> None:
    err = config_error(path=write(tmp_path, '[supabase]\nservice_role_key = "eyJ"\n'), env={})
    assert "supabase.service_role_key" in err.message
    assert err.hint and "SUPABASE_SERVICE_ROLE_KEY" in err.hint
    assert "eyJ" not in str(err)


@pytest.mark.parametrize(
    ("key", "replacement"),
    [
        ("missing_threshold", "alerts.missing_grace_seconds"),
        ("missing_for_seconds", "alerts.repair_slo_seconds"),
    ],
)
def test_retired_alert_settings_still_name_their_replacement(
    tmp_path: Path, key: str, replacement: str
) -> None:
    err = config_error(path=write(tmp_path, f"[alerts]\n{key} = 5\n"), env={})
    assert err.message.startswith(f"alerts.{key} is no longer used")
    assert err.hint == f"remove it; set {replacement} instead"


def test_every_key_of_the_readme_example_is_known(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Configuration", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert "[profile]" in example and "[alerts]" in example
    s = load_settings(write(tmp_path, example), env={})
    assert s.profile == TableRef("public", "profiles", "id")
    assert s.alerts.repair_slo_seconds == 60


def test_an_unknown_key_stops_the_command_with_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, '[profile]\ntabel = "people"\n')
    result = subprocess.run(
        [sys.executable, "-m", "profileguard", "--config", str(path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PG", "PROFILEGUARD_"))},
    )
    assert result.returncode == ExitCode.USAGE == 2, result.stderr
    assert "profile.tabel: unknown setting; did you mean profile.table?" in result.stderr


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[identity\ntable = 'auth.users'\n")
    err = config_error(path=path, env={})
    assert str(path) in err.message
    assert "not valid TOML" in err.message
    assert err.hint and "syntax" in err.hint


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "profileguard.toml"
    path.write_bytes(b'[identity]\ntable = "\xff\xfe"\n')
    err = config_error(env={})
    assert "not valid TOML" in err.message


def test_explicit_config_path_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    err = config_error(path=missing, env={})
    assert str(missing) in err.message
    assert "does not exist" in err.message
    assert err.hint
    err = config_error(env={"PROFILEGUARD_CONFIG": str(missing)})
    assert str(missing) in err.message


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "conf.d"
    directory.mkdir()
    err = config_error(path=directory, env={})
    assert str(directory) in err.message


@pytest.mark.parametrize("value", ["5", "true", '["postgresql://x"]'])
def test_database_url_must_be_text(tmp_path: Path, value: str) -> None:
    err = config_error(path=write(tmp_path, f"[database]\nurl = {value}\n"), env={})
    assert "database.url" in err.message
    assert err.hint and "DATABASE_URL" in err.hint


def test_config_errors_are_profileguard_errors_with_exit_code_2() -> None:
    err = config_error(env={"PROFILEGUARD_ENABLED": "maybe"})
    assert isinstance(err, ProfileGuardError)
    assert err.exit_code == 2
    assert "hint: " in str(err)


# --- conninfo -----------------------------------------------------------------------------------

PG_VARS = ("PGHOST", "PGDATABASE", "PGSERVICE", "PGPORT")


def test_conninfo_without_url_names_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # conninfo() reads the process environment itself; hide any PG* variable for this test only.
    for var in PG_VARS:
        monkeypatch.delenv(var, raising=False)
    settings = load_settings(env={})
    with pytest.raises(ConfigError) as info:
        settings.conninfo()
    assert "DATABASE_URL" in str(info.value)


def test_conninfo_defers_to_libpq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PG_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGHOST", "db.internal")
    assert load_settings(env={}).conninfo() == ""


# --- property: arbitrary text as a table name -------------------------------------------------


def _valid_table_text(text: str) -> bool:
    parts = text.split(".")
    return 1 <= len(parts) <= 2 and all(IDENT.fullmatch(p) for p in parts)


# The autouse chdir fixture is harmless to share between examples.
NO_FIXTURE_CHECK = [HealthCheck.function_scoped_fixture]

identifier_ish = st.text(alphabet=st.sampled_from("abcXYZ_09$.;\"' -\n\t\x00é💥"), max_size=70)


@hsettings(max_examples=300, deadline=None, suppress_health_check=NO_FIXTURE_CHECK)
@given(st.one_of(st.text(max_size=80), identifier_ish))
def test_any_text_as_table_name(text: str) -> None:
    try:
        ref = TableRef.parse(text, "id", setting="profile.table", default_schema="public")
    except ConfigError as err:
        assert "profile.table" in err.message
        assert not _valid_table_text(text)
    else:
        assert _valid_table_text(text)
        assert IDENT.fullmatch(ref.schema) and IDENT.fullmatch(ref.name)
        assert str(ref) == (text if "." in text else f"public.{text}")


@hsettings(max_examples=200, deadline=None, suppress_health_check=NO_FIXTURE_CHECK)
@given(st.one_of(st.text(min_size=1, max_size=80), identifier_ish.filter(bool)))
def test_any_text_as_table_name_through_load_settings(text: str) -> None:
    # Non-empty env values are used as given (an empty one falls back to the file/default).
    env = {"PROFILEGUARD_IDENTITY_TABLE": text, "PROFILEGUARD_PROFILE_KEY": text}
    try:
        s = load_settings(env=env)
    except ConfigError:
        assert not (_valid_table_text(text) and IDENT.fullmatch(text))
    else:
        assert _valid_table_text(text) and IDENT.fullmatch(text)
        assert s.profile.key == text


@hsettings(max_examples=200, deadline=None, suppress_health_check=NO_FIXTURE_CHECK)
@given(st.text(max_size=120))
def test_any_text_as_source_only_raises_config_error(text: str) -> None:
    try:
        source = Source.parse(text, setting="mapping.full_name")
    except ConfigError as err:
        assert "mapping.full_name" in err.message
    else:
        assert IDENT.fullmatch(source.column)
        assert source.transform in (None, "localpart", "lower")
        assert all(p and "." not in p and "$" not in p and "\x00" not in p for p in source.path)


# --- against a database: the mapping must fit the real tables ----------------------------------


def test_mapping_naming_a_missing_profile_column(db: TestDB, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mapping]\nfull_name = ["raw_user_meta_data.full_name"]\n'
        'nickname = ["raw_user_meta_data.nick"]\n',
    )
    settings = load_settings(path, env={}, database_url=db.url)
    with pytest.raises(ConfigError) as info:
        install(settings, create_profile_table=True)
    assert "mapping.nickname" in info.value.message
    assert info.value.hint and "mapping.nickname" in info.value.hint
    # The install was one transaction: nothing of it is left.
    assert db.scalar("select to_regclass('public.profiles')") is None
    assert db.scalar("select count(*) from pg_namespace where nspname = 'profileguard'") == 0


def test_json_path_on_a_non_json_identity_column(db: TestDB, tmp_path: Path) -> None:
    path = write(tmp_path, '[mapping]\nfull_name = ["email.first"]\n')
    settings = load_settings(path, env={}, database_url=db.url)
    with pytest.raises(ConfigError) as info:
        install(settings, create_profile_table=True)
    assert "mapping.full_name" in info.value.message
    assert "not json" in info.value.message
    assert db.scalar("select to_regclass('public.profiles')") is None


def test_mapping_naming_a_missing_identity_column(db: TestDB, tmp_path: Path) -> None:
    path = write(tmp_path, '[mapping]\nfull_name = ["no_such_column"]\n')
    settings = load_settings(path, env={}, database_url=db.url)
    with pytest.raises(ConfigError) as info:
        install(settings, create_profile_table=True)
    assert "mapping.full_name" in info.value.message
    assert "no_such_column" in info.value.message


def test_pooler_mode_from_file_env_and_override(tmp_path: Path) -> None:
    assert load_settings(env={}).pooler is None
    path = write(tmp_path, '[database]\npooler = "transaction"\n')
    assert load_settings(path, env={}).transaction_pooler is True
    assert load_settings(path, env={"PROFILEGUARD_POOLER": "session"}).pooler == "session"
    assert (
        load_settings(path, env={"PROFILEGUARD_POOLER": "session"}, pooler="transaction").pooler
        == "transaction"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"PROFILEGUARD_POOLER": "statement"})
    assert "PROFILEGUARD_POOLER" in caught.value.message and "6543" in (caught.value.hint or "")

"""`load_settings`: defaults, then the TOML file, the environment and explicit overrides."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from profileguard.config.models import (
    CONFIG_FILE,
    PRESETS,
    Settings,
    TableRef,
    check_identifier,
    preset_mapping,
)
from profileguard.config.sections import (
    parse_alerts,
    parse_mapping,
    parse_redact,
    parse_sync,
    parse_username,
)
from profileguard.config.values import (
    parse_pooler,
    subtable,
    to_bool,
    to_float,
    to_http_url,
    to_int,
)
from profileguard.errors import ConfigError

# The sections of the file that are tables, in the order they are checked.
SECTIONS = (
    "database",
    "identity",
    "profile",
    "client",
    "alerts",
    "supabase",
    "username",
    "sync",
    "delete",
)


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, the TOML file, the environment and `overrides`."""
    env = os.environ if env is None else env
    data = _read_file(path, env)
    for name in SECTIONS:  # each a table, checked before any value in them
        subtable(data, name)
    settings = _tables(data, env, overrides)
    settings = _mapping(settings, data)
    settings = _username(settings, data)
    settings = _options(settings, data, env, overrides)
    return settings.with_overrides(**overrides)


def _read_file(path: str | Path | None, env: Mapping[str, str]) -> Mapping[str, Any]:
    """The TOML file's contents: the one named (which must exist), else profileguard.toml if
    there is one, else nothing."""
    explicit = path or env.get("PROFILEGUARD_CONFIG")
    file = Path(explicit) if explicit else Path(CONFIG_FILE)
    data: Mapping[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{file}: not valid TOML: {exc}", hint=f"fix the syntax of {file}"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"config file {file} cannot be read: {exc}", hint="check the path given"
            ) from exc
    elif explicit:
        raise ConfigError(f"config file {file} does not exist", hint="check the path given")
    return data


def _tables(data: Mapping[str, Any], env: Mapping[str, str], overrides: dict[str, Any]) -> Settings:
    """Settings with the database URL and the identity and profile tables (taken out of
    `overrides` when given there)."""
    database = subtable(data, "database")
    identity = subtable(data, "identity")
    profile = subtable(data, "profile")
    url = (
        overrides.pop("database_url", None)
        or env.get("PROFILEGUARD_DATABASE_URL")
        or env.get("DATABASE_URL")
        or database.get("url")
    )
    if url is not None and not isinstance(url, str):
        raise ConfigError(
            f"database.url: {url!r} is not a connection string",
            hint="set [database] url (or DATABASE_URL) to text such as "
            "'postgresql://postgres@localhost:5432/postgres'",
        )
    identity_ref = TableRef.parse(
        overrides.pop("identity_table", None)
        or env.get("PROFILEGUARD_IDENTITY_TABLE")
        or identity.get("table", "auth.users"),
        env.get("PROFILEGUARD_IDENTITY_KEY") or identity.get("key", "id"),
        setting="identity.table",
        default_schema="auth",
    )
    profile_ref = TableRef.parse(
        overrides.pop("profile_table", None)
        or env.get("PROFILEGUARD_PROFILE_TABLE")
        or profile.get("table", "public.profiles"),
        env.get("PROFILEGUARD_PROFILE_KEY") or profile.get("key", "id"),
        setting="profile.table",
        default_schema="public",
    )
    return Settings(database_url=url or None, identity=identity_ref, profile=profile_ref)


def _mapping(settings: Settings, data: Mapping[str, Any]) -> Settings:
    """The mapping: written in [mapping], else the built-in one [profile] preset names."""
    preset = subtable(data, "profile").get("preset")
    if "mapping" in data:
        if preset is not None:
            raise ConfigError(
                "profile.preset and [mapping] are both set: [mapping] replaces the whole mapping",
                hint="remove profile.preset, or remove [mapping] to use the preset",
            )
        mapping = parse_mapping(data["mapping"])
        return replace(settings, mapping=mapping, mapping_is_default=False, preset=None)
    if preset is None:
        return settings
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(
            f"profile.preset: {preset!r} is not a preset",
            hint=f"use one of: {', '.join(PRESETS)} (or write the mapping in [mapping])",
        )
    return replace(settings, mapping=preset_mapping(preset), preset=preset)


def _username(settings: Settings, data: Mapping[str, Any]) -> Settings:
    """The username column (none when set empty or false) and the [username] policy."""
    profile = subtable(data, "profile")
    username = profile.get("username_column", settings.username_column)
    if username in ("", False):
        username = None
    if username is not None:
        check_identifier(username, "profile.username_column")
    return replace(
        settings, username_column=username, username=parse_username(subtable(data, "username"))
    )


def _options(
    settings: Settings,
    data: Mapping[str, Any],
    env: Mapping[str, str],
    overrides: dict[str, Any],
) -> Settings:
    """Flags, limits, the pooler, Supabase, alerts and the [sync] / [delete] sections."""
    database = subtable(data, "database")
    profile = subtable(data, "profile")
    client = subtable(data, "client")
    supabase = subtable(data, "supabase")
    strict = env.get("PROFILEGUARD_STRICT", profile.get("strict", False))
    lock_timeout = env.get("PROFILEGUARD_LOCK_TIMEOUT_MS", profile.get("lock_timeout_ms", 200))
    enabled = env.get("PROFILEGUARD_ENABLED", client.get("enabled", True))
    attempts = env.get("PROFILEGUARD_RETRY_ATTEMPTS", client.get("retry_attempts", 3))
    return replace(
        settings,
        strict=to_bool(strict, "PROFILEGUARD_STRICT / profile.strict"),
        lock_timeout_ms=to_int(
            lock_timeout,
            "PROFILEGUARD_LOCK_TIMEOUT_MS / profile.lock_timeout_ms",
            low=1,
            high=60_000,
        ),
        enabled=to_bool(enabled, "PROFILEGUARD_ENABLED / client.enabled"),
        retry_attempts=to_int(
            attempts, "PROFILEGUARD_RETRY_ATTEMPTS / client.retry_attempts", low=1, high=20
        ),
        retry_base_seconds=to_float(
            client.get("retry_base_seconds", 0.05), "client.retry_base_seconds", low=0, high=60
        ),
        retry_cap_seconds=to_float(
            client.get("retry_cap_seconds", 2.0), "client.retry_cap_seconds", low=0, high=600
        ),
        connect_timeout=to_int(
            client.get("connect_timeout", 10), "client.connect_timeout", low=1, high=600
        ),
        pooler=parse_pooler(
            overrides.pop("pooler", None)
            or env.get("PROFILEGUARD_POOLER")
            or database.get("pooler"),
            "PROFILEGUARD_POOLER / database.pooler",
        ),
        supabase_url=to_http_url(
            env.get("SUPABASE_URL") or supabase.get("url"),
            "SUPABASE_URL / supabase.url",
            example="https://<project-ref>.supabase.co",
        ),
        supabase_service_role_key=env.get("SUPABASE_SERVICE_ROLE_KEY") or None,
        alerts=parse_alerts(subtable(data, "alerts"), env),
        sync_policies=parse_sync(subtable(data, "sync")),
        redact_columns=parse_redact(subtable(data, "delete")),
    )

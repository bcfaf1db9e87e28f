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
    check_keys,
    nearest,
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
# The settings of the sections read here; [alerts], [username] and [delete] are checked where
# they are parsed (sections.py), [mapping] and [sync] are keyed by profile column.
KEYS = {
    "database": ("url", "pooler"),
    "identity": ("table", "key"),
    "profile": ("table", "key", "username_column", "strict", "lock_timeout_ms", "preset"),
    "client": (
        "enabled",
        "retry_attempts",
        "retry_base_seconds",
        "retry_cap_seconds",
        "connect_timeout",
    ),
    "supabase": ("url",),
}
# Settings deliberately never read from the file, and where they come from instead.
ENVIRONMENT_ONLY = {("supabase", "service_role_key"): "SUPABASE_SERVICE_ROLE_KEY"}


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
    _check_names(data)
    settings = _tables(data, env, overrides)
    settings = _mapping(settings, data)
    settings = _username(settings, data)
    settings = _options(settings, data, env, overrides)
    return settings.with_overrides(**overrides)


def _check_names(data: Mapping[str, Any]) -> None:
    """Refuse unknown sections and unknown keys of the sections read here, each with the
    nearest known name."""
    sections = (*SECTIONS, "mapping")
    for name, value in data.items():
        if name in sections:
            continue
        if isinstance(value, Mapping):
            close = nearest(name, sections)
            guess = f"; did you mean [{close}]?" if close else ""
            raise ConfigError(
                f"[{name}]: unknown section{guess}",
                hint=f"the sections are: {', '.join(f'[{s}]' for s in sorted(sections))}",
            )
        owners = [section for section, keys in KEYS.items() if name in keys]
        close = nearest(name, sections)
        guess = (
            f"; did you mean {name} in [{owners[0]}]?"
            if owners
            else (f"; did you mean [{close}]?" if close else "")
        )
        raise ConfigError(
            f"{name}: unknown setting at the top of the file{guess}",
            hint='settings go in their section, e.g. [database] url = "postgresql://…"',
        )
    for (section, key), variable in ENVIRONMENT_ONLY.items():
        if key in subtable(data, section):
            raise ConfigError(
                f"{section}.{key} is never read from a file",
                hint=f"remove it from the file and set {variable} in the environment",
            )
    for section, keys in KEYS.items():
        check_keys(subtable(data, section), section, keys)


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
        or identity.get("table", str(Settings.identity)),
        env.get("PROFILEGUARD_IDENTITY_KEY") or identity.get("key", Settings.identity.key),
        setting="identity.table",
        default_schema="auth",
    )
    profile_ref = TableRef.parse(
        overrides.pop("profile_table", None)
        or env.get("PROFILEGUARD_PROFILE_TABLE")
        or profile.get("table", str(Settings.profile)),
        env.get("PROFILEGUARD_PROFILE_KEY") or profile.get("key", Settings.profile.key),
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
        return replace(
            settings,
            mapping=mapping,
            mapping_is_default=False,
            preset=None,
            configured=settings.configured | {"mapping"},
        )
    if preset is None:
        return settings
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(
            f"profile.preset: {preset!r} is not a preset",
            hint=f"use one of: {', '.join(PRESETS)} (or write the mapping in [mapping])",
        )
    return replace(
        settings,
        mapping=preset_mapping(preset),
        preset=preset,
        configured=settings.configured | {"mapping"},
    )


def _username(settings: Settings, data: Mapping[str, Any]) -> Settings:
    """The username column (none when set empty or false) and the [username] policy."""
    profile = subtable(data, "profile")
    username = profile.get("username_column", settings.username_column)
    if username in ("", False):
        username = None
    if username is not None:
        check_identifier(username, "profile.username_column")
    section = subtable(data, "username")
    return replace(
        settings,
        username_column=username,
        username=parse_username(section),
        configured=settings.configured | {f"username.{key}" for key in section},
    )


def _options(
    settings: Settings,
    data: Mapping[str, Any],
    env: Mapping[str, str],
    overrides: dict[str, Any],
) -> Settings:
    """Flags, limits, the pooler, Supabase, alerts and the [sync] / [delete] sections.

    A key left out keeps the value `settings` already holds: each default is defined once, in
    models.py."""
    database = subtable(data, "database")
    profile = subtable(data, "profile")
    client = subtable(data, "client")
    supabase = subtable(data, "supabase")
    strict = env.get("PROFILEGUARD_STRICT", profile.get("strict", settings.strict))
    lock_timeout = env.get(
        "PROFILEGUARD_LOCK_TIMEOUT_MS", profile.get("lock_timeout_ms", settings.lock_timeout_ms)
    )
    enabled = env.get("PROFILEGUARD_ENABLED", client.get("enabled", settings.enabled))
    attempts = env.get(
        "PROFILEGUARD_RETRY_ATTEMPTS", client.get("retry_attempts", settings.retry_attempts)
    )
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
            client.get("retry_base_seconds", settings.retry_base_seconds),
            "client.retry_base_seconds",
            low=0,
            high=60,
        ),
        retry_cap_seconds=to_float(
            client.get("retry_cap_seconds", settings.retry_cap_seconds),
            "client.retry_cap_seconds",
            low=0,
            high=600,
        ),
        connect_timeout=to_int(
            client.get("connect_timeout", settings.connect_timeout),
            "client.connect_timeout",
            low=1,
            high=600,
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

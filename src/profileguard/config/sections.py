"""The structured sections of the settings, validated: [mapping], [username], [alerts],
[sync] and [delete]."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from profileguard.config.models import (
    UNVERIFIED_MODES,
    UPDATE_POLICIES,
    AlertSettings,
    Source,
    UsernamePolicy,
    check_identifier,
    default_username_policy,
)
from profileguard.config.values import (
    check_keys,
    to_bool,
    to_float,
    to_int,
    to_names,
    to_webhook_url,
)
from profileguard.errors import ConfigError


def parse_mapping(raw: Any, *, setting: str = "mapping") -> dict[str, tuple[Source, ...]]:
    """Parse {profile_column: [source, …]} into validated sources."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"{setting} must map profile columns to lists of sources",
            hint='e.g. full_name = ["raw_user_meta_data.full_name", "raw_user_meta_data.name"]',
        )
    mapping: dict[str, tuple[Source, ...]] = {}
    for column, sources in raw.items():
        key = f"{setting}.{column}"
        check_identifier(column, key)
        if isinstance(sources, str):
            sources = [sources]
        if not isinstance(sources, list | tuple) or not sources:
            raise ConfigError(
                f"{key} must be a non-empty list of sources",
                hint=f'e.g. {column} = ["raw_user_meta_data.{column}"]',
            )
        mapping[column] = tuple(Source.parse(s, setting=key) for s in sources)
    return mapping


def parse_username(section: Mapping[str, Any]) -> UsernamePolicy:
    """Validate the [username] section."""
    check_keys(section, "username", UsernamePolicy.__dataclass_fields__)
    d = default_username_policy()
    pattern = section.get("pattern", d.pattern)
    if pattern in ("", None):
        pattern = None
    elif not isinstance(pattern, str) or len(pattern) > 500 or "\x00" in pattern:
        raise ConfigError(
            f"username.pattern: {pattern!r} is not a regular expression",
            hint="e.g. pattern = '^[a-z0-9_]{3,24}$' (PostgreSQL's ~ syntax)",
        )
    else:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"username.pattern: {pattern!r} is not valid: {exc}",
                hint="e.g. pattern = '^[a-z0-9_]{3,24}$'",
            ) from None
    unverified = section.get("unverified", d.unverified)
    if unverified not in UNVERIFIED_MODES:
        raise ConfigError(
            f"username.unverified: {unverified!r} is not a mode",
            hint="use 'suffix' (client-chosen names get the suffix) or 'plain'",
        )
    provider = section.get("provider_source", str(d.provider_source))
    if provider in ("", None, False):
        provider_source = None
    else:
        provider_source = Source.parse(provider, setting="username.provider_source")
    low = to_int(section.get("min_length", d.min_length), "username.min_length", low=1, high=100)
    high = to_int(section.get("max_length", d.max_length), "username.max_length", low=2, high=500)
    if low > high:
        raise ConfigError(
            "username.min_length is above username.max_length",
            hint="make min_length at most max_length",
        )
    return UsernamePolicy(
        lowercase=to_bool(section.get("lowercase", d.lowercase), "username.lowercase"),
        pattern=pattern,
        min_length=low,
        max_length=high,
        reserved=to_names(section.get("reserved", list(d.reserved)), "username.reserved"),
        unverified=unverified,
        unverified_providers=to_names(
            section.get("unverified_providers", list(d.unverified_providers)),
            "username.unverified_providers",
        ),
        provider_source=provider_source,
    )


# [alerts] settings of earlier versions, and what replaces them.
RETIRED_ALERT_SETTINGS = {
    "missing_threshold": "alerts.missing_grace_seconds",
    "missing_for_seconds": "alerts.repair_slo_seconds",
}


def parse_alerts(section: Mapping[str, Any], env: Mapping[str, str]) -> AlertSettings:
    """Validate the [alerts] section (and PROFILEGUARD_ALERT_WEBHOOK_URL)."""
    for key in section:
        if key in RETIRED_ALERT_SETTINGS:
            raise ConfigError(
                f"alerts.{key} is no longer used: the verdict follows the age of the oldest "
                "user without a profile",
                hint=f"remove it; set {RETIRED_ALERT_SETTINGS[key]} instead",
            )
    check_keys(section, "alerts", AlertSettings.__dataclass_fields__)
    d = AlertSettings()

    def seconds(key: str, high: float = 30 * 86400) -> float:
        return to_float(section.get(key, getattr(d, key)), f"alerts.{key}", low=0, high=high)

    def count(key: str) -> int:
        return to_int(section.get(key, getattr(d, key)), f"alerts.{key}", low=0, high=10**9)

    grace = seconds("missing_grace_seconds", high=86400)
    slo = seconds("repair_slo_seconds", high=30 * 86400)
    if slo < grace:
        raise ConfigError(
            f"alerts.repair_slo_seconds ({slo:g}) is shorter than alerts.missing_grace_seconds "
            f"({grace:g})",
            hint="set repair_slo_seconds at least as long as missing_grace_seconds",
        )
    return AlertSettings(
        missing_grace_seconds=grace,
        repair_slo_seconds=slo,
        success_rate_min_pct=to_float(
            section.get("success_rate_min_pct", d.success_rate_min_pct),
            "alerts.success_rate_min_pct",
            low=0,
            high=100,
        ),
        success_rate_window_seconds=to_float(
            section.get("success_rate_window_seconds", d.success_rate_window_seconds),
            "alerts.success_rate_window_seconds",
            low=60,
            high=8 * 86400,
        ),
        success_rate_min_signups=count("success_rate_min_signups"),
        quarantine_threshold=count("quarantine_threshold"),
        worker_required=to_bool(
            section.get("worker_required", d.worker_required), "alerts.worker_required"
        ),
        worker_heartbeat_max_age_seconds=to_float(
            section.get("worker_heartbeat_max_age_seconds", d.worker_heartbeat_max_age_seconds),
            "alerts.worker_heartbeat_max_age_seconds",
            low=1,
            high=86400,
        ),
        backfill_stall_seconds=to_float(
            section.get("backfill_stall_seconds", d.backfill_stall_seconds),
            "alerts.backfill_stall_seconds",
            low=1,
            high=30 * 86400,
        ),
        webhook_url=to_webhook_url(
            env.get("PROFILEGUARD_ALERT_WEBHOOK_URL") or section.get("webhook_url"),
            "PROFILEGUARD_ALERT_WEBHOOK_URL / alerts.webhook_url",
        ),
        webhook_timeout_seconds=to_float(
            section.get("webhook_timeout_seconds", d.webhook_timeout_seconds),
            "alerts.webhook_timeout_seconds",
            low=0.1,
            high=120,
        ),
        webhook_attempts=to_int(
            section.get("webhook_attempts", d.webhook_attempts),
            "alerts.webhook_attempts",
            low=1,
            high=20,
        ),
        evaluate_interval_seconds=to_float(
            section.get("evaluate_interval_seconds", d.evaluate_interval_seconds),
            "alerts.evaluate_interval_seconds",
            low=0.1,
            high=86400,
        ),
        refresh_interval_seconds=to_float(
            section.get("refresh_interval_seconds", d.refresh_interval_seconds),
            "alerts.refresh_interval_seconds",
            low=1,
            high=86400,
        ),
    )


def parse_sync(section: Mapping[str, Any]) -> dict[str, str]:
    """Validate the [sync] section: {profile_column: never | fill_empty | follow}."""
    policies: dict[str, str] = {}
    for column, policy in section.items():
        key = f"sync.{column}"
        check_identifier(column, key)
        if policy not in UPDATE_POLICIES:
            raise ConfigError(
                f"{key}: {policy!r} is not an update policy",
                hint=f"set {key} to one of: {', '.join(UPDATE_POLICIES)}",
            )
        policies[column] = str(policy)
    return policies


def parse_redact(section: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Validate [delete] redact: the profile columns cleared when a user is soft-deleted."""
    check_keys(section, "delete", ("redact",))
    if "redact" not in section:
        return None
    raw = section["redact"]
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise ConfigError(
            f"delete.redact: {raw!r} is not a list of profile columns",
            hint='e.g. redact = ["full_name", "avatar_url"] (or [] to keep everything)',
        )
    return tuple(check_identifier(col, "delete.redact") for col in dict.fromkeys(raw))

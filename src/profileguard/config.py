"""Settings: where the database is, which tables hold users and profiles, how profiles are filled.

Sources, lowest to highest precedence: built-in defaults, `profileguard.toml` (or the file named by
`PROFILEGUARD_CONFIG`), environment variables, explicit overrides (CLI flags). Every value is
validated here, so a bad setting fails early with the key that is wrong and how to fix it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from profileguard.errors import ConfigError

CONFIG_FILE = "profileguard.toml"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
JSON_KEY = re.compile(r"^[^.|$\x00]{1,200}$")
TRANSFORMS = ("localpart", "lower")
# What sits between profileguard and PostgreSQL: "session" (a direct connection or a
# session-mode pooler) or "transaction" (a transaction-mode pooler: Supavisor on 6543, PgBouncer
# with pool_mode = transaction), where nothing may outlive a transaction.
POOLER_MODES = ("session", "transaction")
# Supabase's transaction-mode pooler port: without a [database] pooler setting, the worker and
# the backfill refuse it rather than guess.
TRANSACTION_POOLER_PORT = 6543
TRUE_WORDS = {"1", "true", "yes", "on"}
# How a mapped profile column follows its source after the user is created ([sync] section):
# never (only set at creation), fill_empty (set while the profile value is empty), follow (kept
# equal to the source).
UPDATE_POLICIES = ("never", "fill_empty", "follow")
FALSE_WORDS = {"0", "false", "no", "off"}

DEFAULT_MAPPING: dict[str, tuple[str, ...]] = {
    "full_name": (
        # Discord's display name; its full_name is the account handle.
        "raw_user_meta_data.custom_claims.global_name",
        "raw_user_meta_data.full_name",
        "raw_user_meta_data.name",
    ),
    "avatar_url": ("raw_user_meta_data.avatar_url", "raw_user_meta_data.picture"),
    "username": (
        "raw_user_meta_data.user_name",
        "raw_user_meta_data.preferred_username",
        "email|localpart",
    ),
}


def check_identifier(value: str, key: str) -> str:
    """Return `value` if it is a plain SQL identifier, else raise naming the config `key`."""
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ConfigError(
            f"{key}: {value!r} is not a valid SQL identifier",
            hint=f"set {key} to a name of letters, digits and underscores (at most 63), "
            "e.g. 'profiles'",
        )
    return value


@dataclass(frozen=True)
class TableRef:
    """A schema-qualified table and its key column."""

    schema: str
    name: str
    key: str = "id"

    @classmethod
    def parse(cls, text: str, key: str, *, setting: str, default_schema: str) -> TableRef:
        parts = text.split(".") if isinstance(text, str) else [text]
        if len(parts) == 1:
            parts = [default_schema, parts[0]]
        if len(parts) != 2:
            raise ConfigError(
                f"{setting}: {text!r} is not a table name",
                hint=f"set {setting} to 'schema.table', e.g. '{default_schema}.users'",
            )
        schema, name = parts
        return cls(
            check_identifier(schema, setting),
            check_identifier(name, setting),
            check_identifier(key, setting.rsplit(".", 1)[0] + ".key"),
        )

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Source:
    """One place a profile value can come from: a column, a JSON path inside it, a transform."""

    column: str
    path: tuple[str, ...] = ()
    transform: str | None = None

    @classmethod
    def parse(cls, text: str, *, setting: str) -> Source:
        if not isinstance(text, str) or not text:
            raise ConfigError(
                f"{setting}: {text!r} is not a source",
                hint="write a source as 'column', 'column.json_key[.key…]' or 'column|localpart'",
            )
        body, _, transform = text.partition("|")
        column, *path = body.split(".")
        check_identifier(column, setting)
        for part in path:
            if not JSON_KEY.fullmatch(part):
                raise ConfigError(
                    f"{setting}: JSON key {part!r} in {text!r} is not allowed",
                    hint="JSON keys must be 1-200 characters without '.', '|' or '$'",
                )
        if transform and transform not in TRANSFORMS:
            raise ConfigError(
                f"{setting}: unknown transform {transform!r} in {text!r}",
                hint=f"use one of: {', '.join(TRANSFORMS)}",
            )
        return cls(column, tuple(path), transform or None)

    def __str__(self) -> str:
        text = ".".join((self.column, *self.path))
        return f"{text}|{self.transform}" if self.transform else text


# Names nobody gets as typed (compared case-insensitively); they still get a suffixed name.
DEFAULT_RESERVED = (
    "admin", "administrator", "root", "superuser", "sysadmin", "system", "support", "help",
    "helpdesk", "security", "abuse", "postmaster", "hostmaster", "webmaster", "noreply",
    "no-reply", "info", "contact", "staff", "team", "official", "moderator", "mod", "owner",
    "billing", "api", "www", "mail", "ftp", "null", "undefined", "anonymous", "guest",
    "everyone", "me", "you", "postgres", "supabase", "service_role", "authenticated", "anon",
)
# Sign-up methods where the metadata is whatever the client sent (Supabase's provider names).
DEFAULT_UNVERIFIED_PROVIDERS = ("email", "phone", "anonymous")
UNVERIFIED_MODES = ("suffix", "plain")


@dataclass(frozen=True)
class UsernamePolicy:
    """How a username is derived from user data (the [username] section).

    Always: Unicode NFKC, control, format (bidi overrides, zero-width) and line-separator
    characters removed, surrounding whitespace trimmed, at most `max_length` characters.
    Optional: lowercase, a `pattern` every username must match. `reserved` names are never given
    as typed. Names a client chose (sign-ups by a provider in `unverified_providers`, and every
    email's local part) get the key-hash suffix when `unverified` is "suffix", so a plain name is
    only ever given to a name an OAuth provider vouches for, or to rows an operator wrote
    (imports, seeds: no provider recorded).
    """

    lowercase: bool = False
    pattern: str | None = None
    min_length: int = 1
    max_length: int = 64
    reserved: tuple[str, ...] = DEFAULT_RESERVED
    unverified: str = "suffix"
    unverified_providers: tuple[str, ...] = DEFAULT_UNVERIFIED_PROVIDERS
    provider_source: Source | None = None  # default: raw_app_meta_data.provider (set below)

    def describe(self) -> dict[str, Any]:
        return {
            "lowercase": self.lowercase, "pattern": self.pattern,
            "min_length": self.min_length, "max_length": self.max_length,
            "reserved": list(self.reserved), "unverified": self.unverified,
            "unverified_providers": list(self.unverified_providers),
            "provider_source": None if self.provider_source is None else str(self.provider_source),
        }


def _default_policy() -> UsernamePolicy:
    return UsernamePolicy(
        provider_source=Source.parse("raw_app_meta_data.provider", setting="username")
    )


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds of the alert rules and where alerts go (the [alerts] section)."""

    # The verdict follows the invariant: degraded once a user has had no profile for longer than
    # the grace, unhealthy once one has for longer than the repair SLO.
    missing_grace_seconds: float = 10.0
    repair_slo_seconds: float = 60.0
    success_rate_min_pct: float = 99.0
    success_rate_window_seconds: float = 3600.0
    success_rate_min_signups: int = 20
    quarantine_threshold: int = 0
    worker_required: bool = False
    worker_heartbeat_max_age_seconds: float = 120.0
    backfill_stall_seconds: float = 600.0
    webhook_url: str | None = None
    webhook_timeout_seconds: float = 5.0
    webhook_attempts: int = 3
    evaluate_interval_seconds: float = 5.0
    refresh_interval_seconds: float = 300.0


@dataclass(frozen=True)
class Settings:
    """Everything profileguard needs to know; build it with `load_settings()`."""

    database_url: str | None = None
    identity: TableRef = TableRef("auth", "users", "id")
    profile: TableRef = TableRef("public", "profiles", "id")
    mapping: Mapping[str, tuple[Source, ...]] = field(
        default_factory=lambda: {
            col: tuple(Source.parse(s, setting=f"mapping.{col}") for s in sources)
            for col, sources in DEFAULT_MAPPING.items()
        }
    )
    mapping_is_default: bool = True
    username_column: str | None = "username"
    username: UsernamePolicy = field(default_factory=_default_policy)
    strict: bool = False
    # The longest the signup trigger waits for any one lock (the profile or events table locked
    # by a migration, say) before it records a transient failure and lets the signup commit.
    lock_timeout_ms: int = 200
    enabled: bool = True
    retry_attempts: int = 3
    retry_base_seconds: float = 0.05
    retry_cap_seconds: float = 2.0
    connect_timeout: int = 10
    pooler: str | None = None
    # Supabase Auth's admin API, for register(): the project URL and the service_role key (the
    # key only from the environment, SUPABASE_SERVICE_ROLE_KEY: never from a file, never shown).
    supabase_url: str | None = None
    supabase_service_role_key: str | None = field(default=None, repr=False)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    # [sync]: profile column -> update policy, as written (see `update_policy` for defaults).
    sync_policies: Mapping[str, str] = field(default_factory=dict)
    # [delete] redact: profile columns set to NULL when the user is soft-deleted; None means the
    # default (every mapped column but the username).
    redact_columns: tuple[str, ...] | None = None

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with `changes` applied (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def conninfo(self) -> str:
        """The libpq connection string; errors name the variable to set when there is none, or
        when it names no database (`postgresql://` from unset variables would otherwise reach
        libpq's default database without a word)."""
        if self.database_url:
            try:
                parts = conninfo_to_dict(self.database_url)
            except psycopg.ProgrammingError as exc:
                raise ConfigError(
                    f"the database URL is not valid: {exc}",
                    hint="set DATABASE_URL to e.g. postgresql://postgres@localhost:5432/postgres",
                ) from None
            if not parts.get("dbname") and not (os.environ.get("PGDATABASE") or parts.get("service")
                                                or os.environ.get("PGSERVICE")):
                raise ConfigError(
                    "the database URL names no database",
                    hint="add the database name, e.g. "
                    "postgresql://postgres@localhost:5432/postgres (or set PGDATABASE)",
                )
            return self.database_url
        if any(os.environ.get(v) for v in ("PGHOST", "PGDATABASE", "PGSERVICE", "PGPORT")):
            return ""
        raise ConfigError(
            "no database to connect to",
            hint="set DATABASE_URL (e.g. postgresql://postgres@localhost:5432/postgres), "
            "pass --database-url, or set [database] url in profileguard.toml",
        )

    @property
    def transaction_pooler(self) -> bool:
        """True when connections go through a transaction-mode pooler (see POOLER_MODES)."""
        return self.pooler == "transaction"

    def require_pooler_mode(self, command: str) -> None:
        """Refuse Supabase's transaction-pooler port when `pooler` was not set: `command` keeps
        session state (LISTEN, a session lock) unless told it may not."""
        if self.pooler is not None or self.database_url is None:
            return
        try:
            port = conninfo_to_dict(self.database_url).get("port")
        except psycopg.ProgrammingError:
            return
        if str(port) == str(TRANSACTION_POOLER_PORT):
            raise ConfigError(
                f"{command}: port {TRANSACTION_POOLER_PORT} is Supabase's transaction-mode "
                "pooler, which keeps no session state between transactions",
                hint=f"run: profileguard {command} --pooler transaction (or set [database] "
                'pooler = "transaction" / PROFILEGUARD_POOLER=transaction), or use the '
                "session pooler (port 5432) or the direct connection",
            )

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly view of the settings (no password)."""
        return {
            "identity_table": str(self.identity),
            "identity_key": self.identity.key,
            "profile_table": str(self.profile),
            "profile_key": self.profile.key,
            "mapping": {col: [str(s) for s in srcs] for col, srcs in self.mapping.items()},
            "username_column": self.username_column,
            "username": self.username.describe(),
            "strict": self.strict,
            "lock_timeout_ms": self.lock_timeout_ms,
            "enabled": self.enabled,
            **describe_sync(self),
        }


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConfigError(f"{key}: {value!r} is not a boolean", hint=f"set {key} to true or false")


def _int(value: Any, key: str, *, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = low - 1
    if isinstance(value, float) and not value.is_integer():
        number = low - 1  # int() would silently truncate 2.5 to 2
    if isinstance(value, bool) or not low <= number <= high:
        raise ConfigError(
            f"{key}: {value!r} is not a whole number from {low} to {high}",
            hint=f"set {key} to a number between {low} and {high}",
        )
    return number


def _float(value: Any, key: str, *, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = low - 1
    if isinstance(value, bool) or not low <= number <= high:
        raise ConfigError(
            f"{key}: {value!r} is not a number from {low} to {high}",
            hint=f"set {key} to a number between {low} and {high}",
        )
    return number


def parse_pooler(value: Any, key: str) -> str | None:
    """Validate a pooler mode ("session" or "transaction"); empty means not set."""
    if value in (None, ""):
        return None
    text = str(value).strip().lower()
    if text not in POOLER_MODES:
        raise ConfigError(
            f"{key}: {value!r} is not a pooler mode",
            hint='use "session" (direct connection or session-mode pooler, port 5432) or '
            '"transaction" (transaction-mode pooler, e.g. Supavisor on port 6543)',
        )
    return text


def _table(section: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = section.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}] must be a table", hint=f"write it as [{name}] in the file")
    return value


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


def _url(value: Any, key: str) -> str | None:
    return _http_url(value, key, example="https://hooks.slack.com/services/…")


def _http_url(value: Any, key: str, *, example: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
        raise ConfigError(
            f"{key}: {value!r} is not an http(s) URL",
            hint=f"set {key} to an address such as '{example}'",
        )
    return value


def _names(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) and 0 < len(v) <= 100 for v in value
    ):
        raise ConfigError(f"{key} must be a list of names", hint=f'e.g. {key} = ["admin"]')
    return tuple(dict.fromkeys(value))


def parse_username(section: Mapping[str, Any]) -> UsernamePolicy:
    """Validate the [username] section."""
    known = set(UsernamePolicy.__dataclass_fields__)
    for key in section:
        if key not in known:
            raise ConfigError(f"username.{key}: unknown setting",
                              hint=f"use one of: {', '.join(sorted(known))}")
    d = _default_policy()
    pattern = section.get("pattern", d.pattern)
    if pattern in ("", None):
        pattern = None
    elif not isinstance(pattern, str) or len(pattern) > 500 or "\x00" in pattern:
        raise ConfigError(f"username.pattern: {pattern!r} is not a regular expression",
                          hint="e.g. pattern = '^[a-z0-9_]{3,24}$' (PostgreSQL's ~ syntax)")
    else:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"username.pattern: {pattern!r} is not valid: {exc}",
                              hint="e.g. pattern = '^[a-z0-9_]{3,24}$'") from None
    unverified = section.get("unverified", d.unverified)
    if unverified not in UNVERIFIED_MODES:
        raise ConfigError(f"username.unverified: {unverified!r} is not a mode",
                          hint="use 'suffix' (client-chosen names get the suffix) or 'plain'")
    provider = section.get("provider_source", str(d.provider_source))
    if provider in ("", None, False):
        provider_source = None
    else:
        provider_source = Source.parse(provider, setting="username.provider_source")
    low = _int(section.get("min_length", d.min_length), "username.min_length", low=1, high=100)
    high = _int(section.get("max_length", d.max_length), "username.max_length", low=2, high=500)
    if low > high:
        raise ConfigError("username.min_length is above username.max_length",
                          hint="make min_length at most max_length")
    return UsernamePolicy(
        lowercase=_bool(section.get("lowercase", d.lowercase), "username.lowercase"),
        pattern=pattern,
        min_length=low,
        max_length=high,
        reserved=_names(section.get("reserved", list(d.reserved)), "username.reserved"),
        unverified=unverified,
        unverified_providers=_names(section.get("unverified_providers",
                                                list(d.unverified_providers)),
                                    "username.unverified_providers"),
        provider_source=provider_source,
    )


# [alerts] settings of earlier versions, and what replaces them.
RETIRED_ALERT_SETTINGS = {
    "missing_threshold": "alerts.missing_grace_seconds",
    "missing_for_seconds": "alerts.repair_slo_seconds",
}


def parse_alerts(section: Mapping[str, Any], env: Mapping[str, str]) -> AlertSettings:
    """Validate the [alerts] section (and PROFILEGUARD_ALERT_WEBHOOK_URL)."""
    known = set(AlertSettings.__dataclass_fields__)
    for key in section:
        if key in RETIRED_ALERT_SETTINGS:
            raise ConfigError(
                f"alerts.{key} is no longer used: the verdict follows the age of the oldest "
                "user without a profile",
                hint=f"remove it; set {RETIRED_ALERT_SETTINGS[key]} instead",
            )
        if key not in known:
            raise ConfigError(
                f"alerts.{key}: unknown setting",
                hint=f"use one of: {', '.join(sorted(known))}",
            )
    d = AlertSettings()

    def seconds(key: str, high: float = 30 * 86400) -> float:
        return _float(section.get(key, getattr(d, key)), f"alerts.{key}", low=0, high=high)

    def count(key: str) -> int:
        return _int(section.get(key, getattr(d, key)), f"alerts.{key}", low=0, high=10**9)

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
        success_rate_min_pct=_float(
            section.get("success_rate_min_pct", d.success_rate_min_pct),
            "alerts.success_rate_min_pct", low=0, high=100,
        ),
        success_rate_window_seconds=_float(
            section.get("success_rate_window_seconds", d.success_rate_window_seconds),
            "alerts.success_rate_window_seconds", low=60, high=8 * 86400,
        ),
        success_rate_min_signups=count("success_rate_min_signups"),
        quarantine_threshold=count("quarantine_threshold"),
        worker_required=_bool(
            section.get("worker_required", d.worker_required), "alerts.worker_required"
        ),
        worker_heartbeat_max_age_seconds=_float(
            section.get("worker_heartbeat_max_age_seconds", d.worker_heartbeat_max_age_seconds),
            "alerts.worker_heartbeat_max_age_seconds", low=1, high=86400,
        ),
        backfill_stall_seconds=_float(
            section.get("backfill_stall_seconds", d.backfill_stall_seconds),
            "alerts.backfill_stall_seconds", low=1, high=30 * 86400,
        ),
        webhook_url=_url(
            env.get("PROFILEGUARD_ALERT_WEBHOOK_URL") or section.get("webhook_url"),
            "PROFILEGUARD_ALERT_WEBHOOK_URL / alerts.webhook_url",
        ),
        webhook_timeout_seconds=_float(
            section.get("webhook_timeout_seconds", d.webhook_timeout_seconds),
            "alerts.webhook_timeout_seconds", low=0.1, high=120,
        ),
        webhook_attempts=_int(
            section.get("webhook_attempts", d.webhook_attempts), "alerts.webhook_attempts",
            low=1, high=20,
        ),
        evaluate_interval_seconds=_float(
            section.get("evaluate_interval_seconds", d.evaluate_interval_seconds),
            "alerts.evaluate_interval_seconds", low=0.1, high=86400,
        ),
        refresh_interval_seconds=_float(
            section.get("refresh_interval_seconds", d.refresh_interval_seconds),
            "alerts.refresh_interval_seconds", low=1, high=86400,
        ),
    )


def update_policy(settings: Settings, column: str) -> str:
    """The update policy of a mapped column: as configured in [sync], else `never` for the
    username (a changed name would break links and mentions) and `fill_empty` for the others (the
    user's own edits are never overwritten)."""
    configured = settings.sync_policies.get(column)
    if configured is not None:
        return configured
    return "never" if column == settings.username_column else "fill_empty"


def describe_sync(settings: Settings) -> dict[str, Any]:
    """The update policy of every mapped column and the redacted columns (JSON-friendly)."""
    return {
        "sync": {col: update_policy(settings, col) for col in settings.mapping},
        "redact": None if settings.redact_columns is None else list(settings.redact_columns),
    }


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
    for key in section:
        if key != "redact":
            raise ConfigError(f"delete.{key}: unknown setting", hint="use: redact")
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


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, the TOML file, the environment and `overrides`."""
    env = os.environ if env is None else env
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

    database = _table(data, "database")
    identity = _table(data, "identity")
    profile = _table(data, "profile")
    client = _table(data, "client")
    alerts = _table(data, "alerts")
    supabase = _table(data, "supabase")
    username_section = _table(data, "username")
    sync_section = _table(data, "sync")
    delete_section = _table(data, "delete")

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
    settings = Settings(database_url=url or None, identity=identity_ref, profile=profile_ref)

    if "mapping" in data:
        mapping = parse_mapping(data["mapping"])
        settings = replace(settings, mapping=mapping, mapping_is_default=False)
    username = profile.get("username_column", settings.username_column)
    if username in ("", False):
        username = None
    if username is not None:
        check_identifier(username, "profile.username_column")
    settings = replace(settings, username_column=username,
                       username=parse_username(username_section))

    strict = env.get("PROFILEGUARD_STRICT", profile.get("strict", False))
    lock_timeout = env.get("PROFILEGUARD_LOCK_TIMEOUT_MS", profile.get("lock_timeout_ms", 200))
    enabled = env.get("PROFILEGUARD_ENABLED", client.get("enabled", True))
    attempts = env.get("PROFILEGUARD_RETRY_ATTEMPTS", client.get("retry_attempts", 3))
    settings = replace(
        settings,
        strict=_bool(strict, "PROFILEGUARD_STRICT / profile.strict"),
        lock_timeout_ms=_int(
            lock_timeout, "PROFILEGUARD_LOCK_TIMEOUT_MS / profile.lock_timeout_ms", low=1,
            high=60_000,
        ),
        enabled=_bool(enabled, "PROFILEGUARD_ENABLED / client.enabled"),
        retry_attempts=_int(
            attempts, "PROFILEGUARD_RETRY_ATTEMPTS / client.retry_attempts", low=1, high=20
        ),
        retry_base_seconds=_float(
            client.get("retry_base_seconds", 0.05), "client.retry_base_seconds", low=0, high=60
        ),
        retry_cap_seconds=_float(
            client.get("retry_cap_seconds", 2.0), "client.retry_cap_seconds", low=0, high=600
        ),
        connect_timeout=_int(
            client.get("connect_timeout", 10), "client.connect_timeout", low=1, high=600
        ),
        pooler=parse_pooler(
            overrides.pop("pooler", None)
            or env.get("PROFILEGUARD_POOLER")
            or database.get("pooler"),
            "PROFILEGUARD_POOLER / database.pooler",
        ),
        supabase_url=_http_url(
            env.get("SUPABASE_URL") or supabase.get("url"), "SUPABASE_URL / supabase.url",
            example="https://<project-ref>.supabase.co",
        ),
        supabase_service_role_key=env.get("SUPABASE_SERVICE_ROLE_KEY") or None,
        alerts=parse_alerts(alerts, env),
        sync_policies=parse_sync(sync_section),
        redact_columns=parse_redact(delete_section),
    )
    return settings.with_overrides(**overrides)

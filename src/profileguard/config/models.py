"""The settings and their parts (tables, sources, the username policy, alerts), with the
constants that bound them; `load_settings` (load.py) builds them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
# with pool_mode = transaction), where nothing may outlive a transaction. Not set, a pooler seen
# on the connection counts as "transaction" (db.keeps_session).
POOLER_MODES = ("session", "transaction")
TRUE_WORDS = {"1", "true", "yes", "on"}
# How a mapped profile column follows its source after the user is created ([sync] section):
# never (only set at creation), fill_empty (set while the profile value is empty), follow (kept
# equal to the source).
UPDATE_POLICIES = ("never", "fill_empty", "follow")
FALSE_WORDS = {"0", "false", "no", "off"}

# Nothing is derived from an email address or a phone number: profile tables are often readable
# by everyone (Supabase's starter: "Public profiles are viewable by everyone"). A sign-up without
# a provider's handle gets no username, or 'user_' + a hash of its key where the column is NOT
# NULL. `email|localpart` in [mapping] opts in to names made from emails.
DEFAULT_MAPPING: dict[str, tuple[str, ...]] = {
    "full_name": (
        # Discord's display name; its full_name is the account handle.
        "raw_user_meta_data.custom_claims.global_name",
        "raw_user_meta_data.full_name",
        "raw_user_meta_data.name",
    ),
    "avatar_url": ("raw_user_meta_data.avatar_url", "raw_user_meta_data.picture"),
    "username": ("raw_user_meta_data.user_name", "raw_user_meta_data.preferred_username"),
}
# Built-in mappings chosen with [profile] preset: "default" above, or "supabase", what Supabase's
# documented handle_new_user() copies (full_name and avatar_url, no username rule).
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "default": DEFAULT_MAPPING,
    "supabase": {
        "full_name": ("raw_user_meta_data.full_name",),
        "avatar_url": ("raw_user_meta_data.avatar_url",),
    },
}


def preset_mapping(name: str) -> dict[str, tuple[Source, ...]]:
    """The mapping of the built-in preset `name` (see PRESETS), parsed."""
    return {
        col: tuple(Source.parse(s, setting=f"mapping.{col}") for s in sources)
        for col, sources in PRESETS[name].items()
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
    "admin",
    "administrator",
    "root",
    "superuser",
    "sysadmin",
    "system",
    "support",
    "help",
    "helpdesk",
    "security",
    "abuse",
    "postmaster",
    "hostmaster",
    "webmaster",
    "noreply",
    "no-reply",
    "info",
    "contact",
    "staff",
    "team",
    "official",
    "moderator",
    "mod",
    "owner",
    "billing",
    "api",
    "www",
    "mail",
    "ftp",
    "null",
    "undefined",
    "anonymous",
    "guest",
    "everyone",
    "me",
    "you",
    "postgres",
    "supabase",
    "service_role",
    "authenticated",
    "anon",
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
            "lowercase": self.lowercase,
            "pattern": self.pattern,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "reserved": list(self.reserved),
            "unverified": self.unverified,
            "unverified_providers": list(self.unverified_providers),
            "provider_source": None if self.provider_source is None else str(self.provider_source),
        }


def default_username_policy() -> UsernamePolicy:
    return UsernamePolicy(
        provider_source=Source.parse("raw_app_meta_data.provider", setting="username")
    )


# The [alerts] keys the verdict judges by: install stores them in the settings row, and
# profileguard.health() reads them there, so every view judges alike (the other keys say where
# alerts go and how often the figures are read).
THRESHOLD_KEYS = (
    "missing_grace_seconds",
    "repair_slo_seconds",
    "success_rate_min_pct",
    "success_rate_window_seconds",
    "success_rate_min_signups",
    "quarantine_threshold",
    "worker_required",
    "worker_heartbeat_max_age_seconds",
    "backfill_stall_seconds",
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

    def thresholds(self) -> dict[str, float | int | bool]:
        """The values of THRESHOLD_KEYS, as install stores them."""
        return {key: getattr(self, key) for key in THRESHOLD_KEYS}


@dataclass(frozen=True)
class WorkerOptions:
    """The worker's tunables and their defaults, read by the worker and by `profileguard worker`."""

    batch_size: int = 1000  # users per repair transaction
    max_attempts: int = 5  # failed attempts before a user is quarantined
    backoff_base: float = 1.0  # a user's next attempt waits up to base·2ⁿ seconds (full jitter)
    backoff_cap: float = 300.0  # ...and never more than this
    transient_attempts: int = 8  # tries of a statement that failed with a transient error
    transient_max_wait: float = 1.0
    incremental_interval: float = 5.0  # seconds between incremental sweeps
    full_interval: float = 300.0  # seconds between full sweeps
    recheck_seconds: float = 120.0
    heartbeat_interval: float = 10.0
    reconnect_cap: float = 30.0
    poll_interval: float = 0.5
    probe_interval: float = 0.25
    quarantine_retry: float = 3600.0  # seconds before a quarantined user is tried again

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1", hint="pass batch_size >= 1")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1", hint="pass max_attempts >= 1")


@dataclass(frozen=True)
class Settings:
    """Everything profileguard needs to know; build it with `load_settings()`."""

    database_url: str | None = None
    identity: TableRef = TableRef("auth", "users", "id")
    profile: TableRef = TableRef("public", "profiles", "id")
    mapping: Mapping[str, tuple[Source, ...]] = field(
        default_factory=lambda: preset_mapping("default")
    )
    # The mapping is built in (the default or a preset): columns the profile table lacks are
    # skipped, where a mapping written in [mapping] must fit the tables exactly.
    mapping_is_default: bool = True
    preset: str | None = "default"  # None: the mapping was written in [mapping] (or learned)
    # What the configuration says explicitly ("mapping" for [mapping] or a preset,
    # "username.<key>" for each [username] key): it always wins over what a takeover learned.
    configured: frozenset[str] = frozenset()
    # The legacy triggers whose function the mapping was learned from (mapping/legacy.py).
    learned_from: tuple[str, ...] = ()
    username_column: str | None = "username"
    username: UsernamePolicy = field(default_factory=default_username_policy)
    strict: bool = False
    # The signup trigger's budget for all its lock waits (the profile table locked by a migration,
    # a name an in-flight signup holds), shared among them (mapping/guards.py); past it the
    # trigger records a transient failure and lets the signup commit.
    lock_timeout_ms: int = 250
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
            if not parts.get("dbname") and not (
                os.environ.get("PGDATABASE") or parts.get("service") or os.environ.get("PGSERVICE")
            ):
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

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly view of the settings (no password)."""
        return {
            "identity_table": str(self.identity),
            "identity_key": self.identity.key,
            "profile_table": str(self.profile),
            "profile_key": self.profile.key,
            "preset": self.preset,
            **({"learned_from": list(self.learned_from)} if self.learned_from else {}),
            "mapping": {col: [str(s) for s in srcs] for col, srcs in self.mapping.items()},
            "username_column": self.username_column,
            "username": self.username.describe(),
            "strict": self.strict,
            "lock_timeout_ms": self.lock_timeout_ms,
            "enabled": self.enabled,
            **describe_sync(self),
        }


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

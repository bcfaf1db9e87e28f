"""The columns profileguard's SQL reads and writes: what a rendered file checks before it runs."""

from __future__ import annotations

from dataclasses import dataclass

from profileguard.mapping.plan import Plan
from profileguard.mapping.sync import build_sync


@dataclass(frozen=True)
class ColumnsUsed:
    """The identity columns profileguard reads (the key, every mapped source, the username
    rule's provider, the columns its sync and delete triggers watch) and the profile columns it
    writes (the key, the mapped columns, the redacted ones), each in first-use order."""

    identity: tuple[str, ...]
    profile: tuple[str, ...]


def columns_used(plan: Plan) -> ColumnsUsed:
    """What the functions and triggers rendered from `plan` depend on in both tables; a column
    outside these can be added, dropped or changed without them noticing."""
    sync = build_sync(plan)
    identity = [plan.settings.identity.key]
    identity += [source.column for sources in plan.mapping.values() for source in sources]
    if plan.username_constraints is not None and plan.username_constraints.provider is not None:
        identity.append(plan.username_constraints.provider.column)
    identity += sync.watched
    if sync.deleted_column is not None:
        identity.append(sync.deleted_column)
    profile = [plan.settings.profile.key, *plan.mapping, *sync.redact]
    return ColumnsUsed(tuple(dict.fromkeys(identity)), tuple(dict.fromkeys(profile)))

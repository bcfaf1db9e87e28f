"""docs/glossary.md holds in the code: the retired words are gone from the package, but where the
glossary says a name users depend on survives (an alias, a stored value, a migration's file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "profileguard"
# Migrations are history: what they once said stays as it was applied.
SOURCES = sorted(
    p
    for p in PACKAGE.rglob("*")
    if p.suffix in (".py", ".sql", ".html", ".js") and "migrations" not in p.parts
)
pytestmark = pytest.mark.once


def lines_matching(pattern: str) -> list[str]:
    found = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    return found


def test_the_worker_is_called_worker() -> None:
    assert lines_matching(r"[Rr]econciler") == []


def test_reconcile_survives_only_as_the_sweeps_former_name() -> None:
    allowed = ("install/cron.py", "sql/generated.sql", "sql/uninstall.sql")
    stray = [hit for hit in lines_matching(r"reconcile") if not hit.startswith(allowed)]
    assert stray == []
    generated = (PACKAGE / "sql" / "generated.sql").read_text(encoding="utf-8")
    assert "create or replace function profileguard.reconcile(" in generated
    assert "select profileguard.sweep(p_max_rows, p_max_attempts)" in generated


def test_guard_is_only_the_product() -> None:
    """`guard` may name the product's client (a ProfileGuard); not the username constraints, the
    rendered file's precondition check, a placeholder or the web service's middleware."""
    retired = r"UsernameGuard|\{guard\}|render_guard|[Pp]lan\.guard\b|web[./]guard|class Guard\b"
    assert lines_matching(retired) == []
    assert not (PACKAGE / "web" / "guard.py").exists()
    assert not (PACKAGE / "sql" / "render_guard.sql").exists()


def test_sync_names_only_profiles_following_their_users() -> None:
    named = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("sync*"))
    assert named == ["mapping/sync.py", "sql/sync.sql", "sql/sync_triggers.sql"]
    for path in named:
        head = (PACKAGE / path).read_text(encoding="utf-8")[:400]
        assert re.search(r"follow|UPDATE trigger", head), path


def test_the_backfill_scans_pages() -> None:
    assert not (PACKAGE / "backfill" / "sweep.py").exists()
    assert lines_matching(r"\bSweep\b") == []

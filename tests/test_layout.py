"""How the package is laid out: helpers one module shares with another are public in the module
that owns them (no `from profileguard.x import _private`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "profileguard"
pytestmark = pytest.mark.once


def test_no_module_imports_another_modules_private_names() -> None:
    reach_ins = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("profileguard"):
                private = [
                    a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"
                ]
                if private:
                    reach_ins.append(f"{path.relative_to(PACKAGE)}: {node.module} {private}")
    assert reach_ins == []

"""Size smells of src/profileguard: modules over 600 lines, classes over 400, functions over 80.

Prints the largest module, class and function, then every one over its limit, as places to look
at when the code around them changes. A smell, not a gate: code is split by subject, never cut to
fit a number, so the check always exits 0.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "profileguard"
LIMITS = {"module": 600, "class": 400, "function": 80}


def _measure(path: Path) -> list[tuple[str, str, int]]:
    """(kind, qualified name, lines) of the module and of every class and function in it."""
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(SRC.parent).as_posix()
    found = [("module", rel, len(text.splitlines()))]

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                name = f"{prefix}.{child.name}" if prefix else child.name
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                assert child.end_lineno is not None
                found.append((kind, f"{rel}:{name}", child.end_lineno - start + 1))
                visit(child, name)
            else:
                visit(child, prefix)

    visit(ast.parse(text), "")
    return found


def main() -> int:
    sizes = [m for path in sorted(SRC.rglob("*.py")) for m in _measure(path)]
    for kind, limit in LIMITS.items():
        of_kind = sorted((s for s in sizes if s[0] == kind), key=lambda s: -s[2])
        print(f"largest {kind}: {of_kind[0][1]} ({of_kind[0][2]} lines, limit {limit})")
        for _, name, lines in of_kind:
            if lines <= limit:
                break
            print(f"  look at {name}: {lines} lines > {limit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

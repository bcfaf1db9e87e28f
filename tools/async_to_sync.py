"""Generate the blocking client (client/blocking.py) from the async client (client/aio.py).

The client is written once, for asyncio; its blocking twin is derived by transforming the syntax
tree: `async def` → `def`, `async for`/`async with` → `for`/`with`, `await x` → `x`,
`await asyncio.to_thread(f, *args)` → `f(*args)` (work kept off the event loop runs in place),
nested `with` blocks merged, and names mapped by NAMES (AsyncX → X, and the hooks where the two
clients differ on purpose: `async_pool` → `blocking_pool`, `fallback_sql_async` → `fallback_sql`).
Docstrings get the same names and the few phrases in PHRASES. Comments are kept (ast-comments);
the result is sorted and formatted by ruff, as the rest of the code is.

    python tools/async_to_sync.py            # write client/blocking.py
    python tools/async_to_sync.py --check    # exit 1, with a diff, when it is not up to date

A construct with no blocking equivalent here (an asyncio call other than to_thread, a name with
"async" left in it) stops the generation with an error instead of producing a wrong module.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import re
import subprocess
import sys
from pathlib import Path

import ast_comments as ast

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "src" / "profileguard" / "client"
SOURCE = CLIENT / "aio.py"
TARGET = CLIENT / "blocking.py"
COMMAND = "python tools/async_to_sync.py"

# Identifiers of the async client and what the blocking client uses instead.
NAMES = {
    "AsyncConnection": "Connection",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncIdentityBackend": "IdentityBackend",
    "AsyncProfileGuard": "ProfileGuard",
    "AsyncRetrying": "Retrying",
    "AsyncSupabaseAdminAPIBackend": "SupabaseAdminAPIBackend",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "async_pool": "blocking_pool",
    "default_async_backend": "default_backend",
    "fallback_sql_async": "fallback_sql",
}

# Docstring phrases that name the async side, after NAMES is applied to the words.
PHRASES = {
    "async client": "blocking client",
    "`async with`": "`with`",
    "`await ": "`",
}

HEADER = f"# Generated from aio.py by `{COMMAND}`: edit aio.py, then run it again.\n"


class GenerationError(Exception):
    """The async source holds something the generator cannot map."""


class AsyncToBlocking(ast.NodeTransformer):
    """The syntax changes: coroutines, async loops and blocks, awaits, names."""

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        fields = {name: getattr(node, name) for name in node._fields}
        new = ast.copy_location(ast.FunctionDef(**fields), node)
        new.name = NAMES.get(new.name, new.name)
        return self.generic_visit(new)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = NAMES.get(node.name, node.name)
        return self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.name = NAMES.get(node.name, node.name)
        return self.generic_visit(node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        fields = {name: getattr(node, name) for name in node._fields}
        return self.generic_visit(ast.copy_location(ast.For(**fields), node))

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        fields = {name: getattr(node, name) for name in node._fields}
        return self.visit_With(ast.copy_location(ast.With(**fields), node))

    def visit_With(self, node: ast.With) -> ast.AST:
        """`with a:` holding only `with b:` becomes `with a, b:` (what ruff's SIM117 asks)."""
        self.generic_visit(node)
        if len(node.body) == 1 and isinstance(node.body[0], ast.With):
            inner = node.body[0]
            node.items = [*node.items, *inner.items]
            node.body = inner.body
        return node

    def visit_Await(self, node: ast.Await) -> ast.AST:
        value = node.value
        if _is_to_thread(value):
            assert isinstance(value, ast.Call)
            if not value.args:
                raise GenerationError(f"line {node.lineno}: asyncio.to_thread() without a callable")
            value = ast.copy_location(
                ast.Call(func=value.args[0], args=value.args[1:], keywords=value.keywords), value
            )
        return self.visit(value)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = NAMES.get(node.id, node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        node.attr = NAMES.get(node.attr, node.attr)
        return self.generic_visit(node)

    def visit_alias(self, node: ast.alias) -> ast.AST:
        node.name = NAMES.get(node.name, node.name)
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST | None:
        """`import asyncio` goes: the only use the generator maps is to_thread."""
        node.names = [alias for alias in node.names if alias.name != "asyncio"]
        return node if node.names else None


def _is_to_thread(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "to_thread"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "asyncio"
    )


def _map_docstrings(tree: ast.AST) -> None:
    """Apply NAMES (as whole words) and PHRASES to the module's, classes' and functions' docs."""
    words = re.compile(r"\b(" + "|".join(map(re.escape, NAMES)) + r")\b")
    holders = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if not isinstance(node, holders) or not node.body:
            continue
        first = node.body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
            continue
        if not isinstance(first.value.value, str):
            continue
        text = words.sub(lambda m: NAMES[m.group(0)], first.value.value)
        for phrase, blocking in PHRASES.items():
            text = text.replace(phrase, blocking)
        first.value.value = text


def _keep_blank_lines(tree: ast.AST) -> None:
    """Unparsing drops blank lines; put one back where the source had any between statements."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list) or not body:
            continue
        kept = [body[0]]
        for before, after in itertools.pairwise(body):
            if after.lineno - before.end_lineno > 1:
                kept.append(ast.Comment(value="", inline=False, lineno=0, col_offset=0))
            kept.append(after)
        node.body = kept


def _check_nothing_async(tree: ast.AST) -> None:
    """Fail on what the transformation left async: it would be a wrong blocking module."""
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.alias):
            name = node.name
        if name == "asyncio" or (name and "async" in name.lower()):
            line = getattr(node, "lineno", "?")
            raise GenerationError(
                f"aio.py line {line}: {name!r} has no blocking equivalent; "
                f"add it to NAMES in tools/async_to_sync.py"
            )


def _ruff(args: list[str], text: str) -> str:
    """Run ruff on `text` as if it were client/blocking.py (so pyproject.toml's settings apply)."""
    as_file = CLIENT / "blocking.py"
    command = [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(as_file), "-"]
    done = subprocess.run(command, input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise GenerationError(f"ruff {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def generate(source: str) -> str:
    """The blocking client's text for the async client's `source`."""
    tree = ast.parse(source, filename=str(SOURCE))
    _keep_blank_lines(tree)
    _map_docstrings(tree)
    tree = AsyncToBlocking().visit(tree)
    _check_nothing_async(tree)
    text = HEADER + ast.unparse(tree) + "\n"
    text = _ruff(["check", "--fix-only", "--select", "I", "--quiet"], text)
    return _ruff(["format", "--quiet"], text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when blocking.py differs from a generation"
    )
    options = parser.parse_args(argv)
    try:
        generated = generate(SOURCE.read_text(encoding="utf-8"))
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    shown = TARGET.relative_to(ROOT) if TARGET.is_relative_to(ROOT) else TARGET
    if not options.check:
        if generated != current:
            TARGET.write_text(generated, encoding="utf-8")
            print(f"wrote {shown}")
        return 0
    if generated == current:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        generated.splitlines(keepends=True),
        f"{shown} (checked in)",
        f"{shown} (generated from aio.py)",
    )
    sys.stdout.writelines(diff)
    print(
        f"{shown} is not what aio.py generates; run: {COMMAND}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())

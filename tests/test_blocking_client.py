"""The blocking client is generated from the async one, and no client module is called `sync`
(the glossary's word for profiles following their users, not for the blocking client)."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "src" / "profileguard" / "client"
TOOL = ROOT / "tools" / "async_to_sync.py"

pytestmark = pytest.mark.once


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_client_module_is_named_sync() -> None:
    assert not (CLIENT / "sync.py").exists()
    assert not (CLIENT / "sync").exists()
    assert importlib.util.find_spec("profileguard.client.sync") is None
    mention = re.compile(r"profileguard\.client\.sync\b|client/sync\.py")
    places = [ROOT / "src", ROOT / "tests", ROOT / "examples", ROOT / "bench", ROOT / "tools"]
    files = [path for place in places for path in place.rglob("*.py")]
    files += [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "Makefile"]
    named = [
        str(path.relative_to(ROOT))
        for path in files
        if path != Path(__file__) and mention.search(path.read_text(encoding="utf-8"))
    ]
    assert named == []


def test_the_blocking_client_is_a_fresh_generation_of_the_async_one() -> None:
    """The check `make lint` runs: blocking.py is exactly what aio.py generates now."""
    done = subprocess.run(
        [sys.executable, str(TOOL), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = (CLIENT / "blocking.py").read_text(encoding="utf-8")
    assert text.startswith("# Generated from aio.py by `python tools/async_to_sync.py`")
    tree = ast.parse(text)
    async_nodes = (ast.AsyncFunctionDef, ast.AsyncFor, ast.AsyncWith, ast.Await)
    assert not [node for node in ast.walk(tree) if isinstance(node, async_nodes)]
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes == ["ProfileGuard"]


def test_the_check_fails_on_a_blocking_client_edited_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _tool()
    generated = tool.generate(tool.SOURCE.read_text(encoding="utf-8"))
    target = tmp_path / "blocking.py"
    monkeypatch.setattr(tool, "TARGET", target)
    target.write_text(generated.replace("created first if missing", "created if missing"))
    assert tool.main(["--check"]) == 1
    out, err = capsys.readouterr()
    assert any(
        line.startswith("+") and "created first if missing" in line for line in out.splitlines()
    )
    assert "run: python tools/async_to_sync.py" in err
    assert tool.main([]) == 0
    assert target.read_text() == generated
    assert tool.main(["--check"]) == 0


def test_the_generator_refuses_what_it_cannot_map() -> None:
    tool = _tool()
    with pytest.raises(tool.GenerationError, match="asyncio"):
        tool.generate("import asyncio\n\n\nasync def nap() -> None:\n    await asyncio.sleep(1)\n")
    with pytest.raises(tool.GenerationError, match="AsyncThing"):
        tool.generate("from x import AsyncThing\n\n\nasync def make() -> None:\n    AsyncThing()\n")


def test_the_generator_maps_the_async_forms() -> None:
    source = (
        "import asyncio\n\n\n"
        "class AsyncProfileGuard:\n"
        '    """The async client. Use `async with`, or `await close()`."""\n\n'
        "    async def go(self, conn: AsyncConnection) -> None:\n"
        "        async for attempt in AsyncRetrying():\n"
        "            with attempt:\n"
        "                async with self.pool.connection() as c:\n"
        "                    await asyncio.to_thread(work, c, 1)\n"
    )
    out = _tool().generate(source)
    assert "class ProfileGuard:" in out
    assert '"""The blocking client. Use `with`, or `close()`."""' in out
    assert "def go(self, conn: Connection) -> None:" in out
    assert "for attempt in Retrying():" in out
    assert "with attempt, self.pool.connection() as c:" in out
    assert "work(c, 1)" in out
    assert "async" not in out.lower().replace("async_to_sync", "")
    assert "import asyncio" not in out

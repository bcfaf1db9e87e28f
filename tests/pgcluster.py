"""Private PostgreSQL 15 clusters and helpers to run server binaries that refuse root.

A test that needs server settings the shared servers must not get (shared_preload_libraries,
say) starts its own cluster here: a temporary data directory, its own free port, stopped and
removed afterwards. `initdb`, `pg_ctl` and `pgbouncer` refuse to run as root, so as root they run
as the `postgres` user through `runuser`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
INSTALL_HINT = "run: .ci/install-deps"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_server_user(command: Sequence[str], user: str = "postgres") -> list[str]:
    """`command`, run as `user` when we are root (the server binaries refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *command]
    return list(command)


def server_tempdir(prefix: str, user: str = "postgres") -> Path:
    """A fresh temporary directory `user` owns (when we are root; else ours)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, user, user)
    return path


def run(command: Sequence[str], timeout: float = 120, user: str = "postgres") -> None:
    """Run a server command as `user`; a failure raises with its output."""
    done = subprocess.run(
        as_server_user(command, user),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )


def conf_value(value: str | int) -> str:
    """A postgresql.conf value: numbers bare, strings single-quoted."""
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


@contextmanager
def private_cluster(settings: Mapping[str, str | int]) -> Iterator[str]:
    """Start a PostgreSQL 15 cluster with `settings` added to its postgresql.conf; yield the
    maintenance connection string (user postgres, trust) and stop and remove it afterwards."""
    initdb = PG15_BIN / "initdb"
    if not initdb.exists():
        raise RuntimeError(f"{initdb} is missing (Debian package postgresql-15); {INSTALL_HINT}")
    root = server_tempdir("profileguard-pg15-")
    data = root / "data"
    port = free_port()
    try:
        run(
            [
                str(initdb),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        conf = {
            "port": port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(root),
            "fsync": "off",
            **settings,
        }
        with (data / "postgresql.conf").open("a") as f:
            f.writelines(f"{key} = {conf_value(value)}\n" for key, value in conf.items())
        log = root / "server.log"
        try:
            run(
                [
                    str(PG15_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{log.read_text() if log.exists() else ''}") from e
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            run([str(PG15_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)

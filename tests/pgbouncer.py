"""A real PgBouncer in transaction mode in front of the server under test, on its own port.

PgBouncer (Debian package `pgbouncer`; .ci/run installs it) refuses to run as root, so it runs
as the server's own system user (`runuser`): the owner of the Unix socket directory of the
embedded server, `postgres` for a server reached over TCP. Authentication is `trust` with a
generated userlist; every database name is passed through to the server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
from conftest import TestDB
from monitoring import free_port
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from profileguard.config import Settings, load_settings

BINARY_HINT = "install PgBouncer: apt-get install -y pgbouncer (.ci/run does it)"


@dataclass
class Bouncer:
    """A running PgBouncer: the URL of the test database through it, and settings for it."""

    url: str
    port: int
    log: Path

    def settings(self, pooler: str | None = "transaction") -> Settings:
        env = {"PROFILEGUARD_POOLER": pooler} if pooler else {}
        return load_settings(env=env, database_url=self.url)


def _binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    assert found, BINARY_HINT
    return found


def _run_as(host: str) -> str | None:
    """The user PgBouncer runs as (None: the current one, when it is not root)."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid).pw_name
    return "postgres"


@contextmanager
def pgbouncer(db: TestDB, *, pool_size: int = 4) -> Iterator[Bouncer]:
    """PgBouncer with pool_mode = transaction in front of `db`'s server, stopped on exit."""
    target = conninfo_to_dict(db.url)
    host = str(target.get("host") or "127.0.0.1")
    server_port = str(target.get("port") or "5432")
    user = str(target.get("user") or "postgres")
    run_as = _run_as(host)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="profileguard-pgbouncer-"))
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n', encoding="utf-8")
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={server_port} user={user}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"admin_users = {user}\n"
        f"auth_file = {workdir / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 200\n"
        "server_reset_query =\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
        f"pidfile = {workdir / 'pgbouncer.pid'}\n",
        encoding="utf-8",
    )
    if run_as is not None:
        account = pwd.getpwnam(run_as)
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
    command = [_binary(), str(config)]
    if run_as is not None:
        command = ["runuser", "-u", run_as, "--", *command]
    # Its log goes to the logfile; nothing is piped (a full pipe would stall it).
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    log = workdir / "pgbouncer.log"
    url = make_conninfo(
        "", host="127.0.0.1", port=str(port), user=user, dbname=str(target["dbname"])
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert proc.poll() is None, "pgbouncer exited: " + (
                    log.read_text(errors="replace") if log.exists() else "no log"
                )
                assert time.monotonic() < deadline, "pgbouncer did not start"
                time.sleep(0.1)
        yield Bouncer(url, port, log)
    finally:
        pidfile = workdir / "pgbouncer.pid"
        pid = int(pidfile.read_text().strip()) if pidfile.exists() else None
        if pid is not None:  # PgBouncer itself (runuser waits for it)
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

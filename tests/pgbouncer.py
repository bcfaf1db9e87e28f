"""PgBouncer in transaction mode in front of the server under test, as Supabase's transaction
pooler (port 6543) is: no session state, no session advisory locks, no LISTEN.

    with pgbouncer(server_dsn) as url:   # url reaches any database of the server
        psycopg.connect(make_conninfo(url, dbname=...), prepare_threshold=None)

PgBouncer refuses root, so as root it runs as the user that can reach the server's socket
(`postgres` for a TCP server). Connect with `prepare_threshold=None` (PgBouncer 1.18 does not
keep prepared statements across transactions).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from conftest import wait_for
from pgcluster import INSTALL_HINT, free_port, run, server_tempdir
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PGBOUNCER = Path("/usr/sbin/pgbouncer")


def _server_user(host: str) -> str:
    """Who may connect to `host`: the owner of a Unix socket directory, else `postgres`."""
    if host.startswith("/") and os.geteuid() == 0:
        owner = Path(host).owner()
        if owner != "root":
            return owner
    return "postgres"


@contextmanager
def pgbouncer(server_dsn: str, *, pool_size: int = 10,
              users: Sequence[str] = ("postgres",)) -> Iterator[str]:
    """Run PgBouncer (transaction mode, trust for `users`) in front of `server_dsn`; yield the
    connection string of its `postgres` database through the pooler, then stop it."""
    if not PGBOUNCER.exists():
        raise RuntimeError(f"{PGBOUNCER} is missing (Debian package pgbouncer); {INSTALL_HINT}")
    server = conninfo_to_dict(server_dsn)
    host = str(server.get("host") or "127.0.0.1")
    user = _server_user(host)
    root = server_tempdir("profileguard-pgbouncer-", user)
    port = free_port()
    ini = root / "pgbouncer.ini"
    (root / "userlist.txt").write_text("".join(f'"{u}" ""\n' for u in users))
    ini.write_text(
        "[databases]\n"
        f"* = host={host} port={server.get('port') or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {root / 'userlist.txt'}\n"
        f"admin_users = {users[0]}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 500\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {root / 'pgbouncer.log'}\n"
        f"pidfile = {root / 'pgbouncer.pid'}\n"
    )
    url = make_conninfo("", host="127.0.0.1", port=port, user=users[0], dbname="postgres")
    pidfile = root / "pgbouncer.pid"
    try:
        run([str(PGBOUNCER), "-d", str(ini)], user=user)
        if not wait_for(lambda: _answers(url), timeout=30, interval=0.1):
            log = root / "pgbouncer.log"
            raise RuntimeError(f"PgBouncer did not answer on port {port}:\n"
                               f"{log.read_text() if log.exists() else ''}")
        yield url
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2, prepare_threshold=None).close()
    except psycopg.OperationalError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

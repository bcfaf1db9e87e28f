"""Instructions per signup (callgrind): no trigger vs the per-row trigger vs profileguard.

Wall-clock figures on a shared machine are noisy; an instruction count is not. This builds a
private PostgreSQL cluster (initdb in a temporary directory, a Unix socket only), makes one
database per configuration exactly as bench/signup.py does (``none``, ``per-row``, ``profileguard``
with the default mapping, ``pg-same-map`` with the per-row trigger's), stops the server, and then
runs ``postgres --single`` under ``valgrind --tool=callgrind`` doing a Supabase Auth-shaped signup
N times (prepared statements, as pgbench's ``--protocol=prepared``: insert the user, update its
role, insert the identity, commit, as ``supabase_auth_admin``). Each run starts from a copy of the
freshly built cluster; the instructions per signup are the difference between a run of
``--signups`` and one of ``--warmup`` signups, divided by the difference (startup and first-call
caching cancel out); per bulk row likewise, of bench/signup.py's bulk insert, and for ``none``
and ``profileguard`` of its colliding bulk insert too (20 users to a username: 95 % suffixed), set
against the per-row trigger's bulk row of unique names. Each database first holds ``--existing``
users (with their profiles, made by that configuration's trigger), so that foreign-key checks are
planned as they are on a live server (an index lookup) and not as a scan of a near-empty table,
which would cost the per-row trigger ~75 k instructions per signup that it does not cost in
production.

Run (as root it runs the server as ``postgres``)::

    .venv/bin/python bench/signup_instructions.py
    .venv/bin/python bench/signup_instructions.py --keep /tmp/cg   # callgrind.out.* to annotate

It needs valgrind and PostgreSQL's server binaries (``--bindir``, default the newest
/usr/lib/postgresql/*/bin). It is a measurement, not a test: it exits 0 whatever the figures are.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from benchdb import log
from psycopg.conninfo import make_conninfo
from signup import BULK, COLLIDING_BULK, COLLIDING_CONFIGS, CONFIGS, set_trigger

from profileguard import sql as sqlfiles
from profileguard.config import load_settings
from profileguard.install import install

PORT = 54329  # of the private cluster's socket, inside its own directory
# What a run measures: signups, a bulk insert of unique names, one of colliding names.
WORKLOADS = ("signups", "bulk", "colliding")

# The statements of bench/signup.py's pgbench script, prepared once per backend (one line each:
# the single-user backend ends a statement at a newline).
PREPARE = (
    "set role supabase_auth_admin",
    "set search_path = auth",
    """prepare pg_user(uuid, text) as insert into users (instance_id, id, aud, role, email,
        encrypted_password, raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
        values ('00000000-0000-0000-0000-000000000000', $1, 'authenticated', '',
        $2 || '@bench.example', '$2a$10$abcdefghijklmnopqrstuuKzSvmm0GVKOQY1WUr6sGmO2X1aIH1Ae',
        '{"provider": "email", "providers": ["email"]}',
        jsonb_build_object('full_name', 'Bench User ' || $2,
            'avatar_url', 'https://example.com/avatars/' || $2 || '.png', 'user_name', $2),
        now(), now()) returning id""",
    """prepare pg_role(uuid) as update users set role = 'authenticated', updated_at = now()
        where id = $1""",
    """prepare pg_identity(uuid, text) as insert into identities (provider_id, user_id,
        identity_data, provider, last_sign_in_at, created_at, updated_at)
        values ($1::text, $1, jsonb_build_object('sub', $1::text, 'email', $2 || '@bench.example'),
        'email', now(), now(), now())""",
)
SIGNUP = """begin
execute pg_user('{id}', '{name}')
execute pg_role('{id}')
execute pg_identity('{id}', '{name}')
commit
"""


def find_bindir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3])
    )
    if not candidates:
        sys.exit("PostgreSQL server binaries not found: pass --bindir")
    return Path(candidates[-1]).parent


def script(count: int, workload: str = "signups") -> str:
    """Prepare the statements, then `count` signups with deterministic ids and names; or
    bench/signup.py's one INSERT … SELECT of `count` users (`workload` "bulk", or "colliding":
    20 users to a username)."""
    if workload != "signups":
        statement = BULK if workload == "bulk" else COLLIDING_BULK
        return " ".join(statement.replace("%s", str(count)).split()) + "\n"
    lines = [" ".join(statement.split()) + "\n" for statement in PREPARE]
    for n in range(count):
        ident = uuid.UUID(hashlib.md5(f"signup {n}".encode()).hexdigest())
        lines.append(SIGNUP.format(id=ident, name=f"cg0n{n}"))
    return "".join(lines)


class Cluster:
    """A private cluster in `root`, owned by the user the server runs as."""

    def __init__(self, root: Path, bindir: Path):
        self.root = root
        self.bindir = bindir
        self.data = root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            self.as_user = ["runuser", "-u", "postgres", "--"]
            entry = pwd.getpwnam("postgres")
            os.chown(root, entry.pw_uid, entry.pw_gid)

    def run(self, *command: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, *map(str, command)],
            text=True,
            check=True,
            capture_output=True,
            **kwargs,
        )  # type: ignore[call-overload]

    def initdb(self) -> None:
        self.run(
            self.bindir / "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )

    @contextlib.contextmanager
    def server(self) -> Iterator[str]:
        self.run(
            self.bindir / "pg_ctl",
            "-D",
            self.data,
            "-w",
            "-l",
            self.root / "server.log",
            "-o",
            f"-p {PORT} -k {self.root} -c listen_addresses=''",
            "start",
        )
        try:
            yield make_conninfo(host=str(self.root), port=PORT, user="postgres", dbname="postgres")
        finally:
            self.run(self.bindir / "pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")


def build(url: str, config: str, existing: int = 0) -> None:
    """Database `config` with the Supabase schema, exactly that configuration's trigger and
    `existing` users inserted through it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'create database "{config}"')
    db_url = make_conninfo(url, dbname=config)
    settings = load_settings(env={}, database_url=db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
    install(settings, create_profile_table=True)
    set_trigger(db_url, config)
    with psycopg.connect(db_url, autocommit=True) as conn:
        if existing:
            # Named apart from the measured bulk insert's users (emails are unique).
            conn.execute(BULK.replace("%s", str(existing)).replace("'bulk_'", "'old_'"))
        conn.execute("vacuum analyze")
        conn.execute("checkpoint")


def instructions(
    cluster: Cluster,
    pristine: Path,
    config: str,
    count: int,
    keep: Path | None,
    workload: str = "signups",
) -> int:
    """Instructions of one single-user backend doing `count` signups (or inserting `count`
    users in one statement: `workload` "bulk" or "colliding") on a fresh copy."""
    run_root = cluster.root / "run"
    if run_root.exists():
        shutil.rmtree(run_root)
    shutil.copytree(pristine, run_root, symlinks=True)
    if cluster.as_user:
        subprocess.run(["chown", "-R", "postgres:postgres", str(run_root)], check=True)
    out = cluster.root / f"callgrind.out.{config}.{workload}.{count}"
    input_file = cluster.root / "input.sql"
    input_file.write_text(script(count, workload), encoding="utf-8")
    with open(input_file, encoding="utf-8") as stdin:
        done = subprocess.run(
            [
                *cluster.as_user,
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                str(cluster.bindir / "postgres"),
                "--single",
                "-D",
                str(run_root),
                config,
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0 or "ERROR:" in done.stdout + done.stderr:
        raise RuntimeError(
            f"{config}: the single-user backend failed:\n{done.stdout[-2000:]}"
            f"\n{done.stderr[-2000:]}"
        )
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(encoding="utf-8"), re.M)
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, keep / out.name)
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signups", type=int, default=200, help="signups of the measured run")
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="signups of the run subtracted from it (startup, first calls)",
    )
    parser.add_argument(
        "--bulk-rows",
        type=int,
        default=2000,
        help="users of the measured bulk insert (0: none); the one of "
        "--bulk-rows / 10 is subtracted",
    )
    parser.add_argument(
        "--existing",
        type=int,
        default=20000,
        help="users in each database before the measured runs",
    )
    parser.add_argument("--bindir", type=Path, default=None, help="PostgreSQL server binaries")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="copy the callgrind.out files here (for callgrind_annotate)",
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)}",
    )
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    if unknown := set(workloads) - set(WORKLOADS):
        parser.error(f"--workloads: unknown {', '.join(sorted(unknown))}")
    if args.signups <= args.warmup or args.warmup < 0:
        parser.error("--signups must exceed --warmup (and --warmup be >= 0)")
    configs = [c for c in args.configs.split(",") if c]
    if unknown := set(configs) - set(CONFIGS):
        parser.error(f"--configs: unknown {', '.join(sorted(unknown))}")
    if not shutil.which("valgrind"):
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")
    bindir = args.bindir or find_bindir()
    with tempfile.TemporaryDirectory(prefix="pg_signup_cg_") as tmp:
        cluster = Cluster(Path(tmp), bindir)
        log(f"initdb in {tmp} ({bindir})")
        cluster.initdb()
        with cluster.server() as url:
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "select version(), current_setting('jit'), pg_jit_available()"
                ).fetchone()
            for config in configs:
                log(f"building database {config}")
                build(url, config, args.existing)
        per: dict[str, float] = {}
        per_row: dict[str, dict[str, float]] = {"bulk": {}, "colliding": {}}
        small = args.bulk_rows // 10
        for config in configs:
            if "signups" in workloads:
                low = instructions(cluster, cluster.data, config, args.warmup, args.keep)
                high = instructions(cluster, cluster.data, config, args.signups, args.keep)
                per[config] = (high - low) / (args.signups - args.warmup)
                log(f"{config}: {per[config]:,.0f} instructions per signup")
            if args.bulk_rows <= small:
                continue
            for workload, rows in per_row.items():
                if workload not in workloads or (
                    workload == "colliding" and config not in COLLIDING_CONFIGS
                ):
                    continue
                low = instructions(cluster, cluster.data, config, small, args.keep, workload)
                high = instructions(
                    cluster, cluster.data, config, args.bulk_rows, args.keep, workload
                )
                rows[config] = (high - low) / (args.bulk_rows - small)
                log(f"{config}: {rows[config]:,.0f} instructions per row of a {workload} insert")
    assert row is not None
    print(f"{row[0]}; jit={row[1]} (available: {'yes' if row[2] else 'no'})")
    print(
        f"instructions (callgrind, single-user backend, {args.existing} users there before): "
        f"per signup ({args.signups} - {args.warmup} signups, prepared statements) and per row "
        f"of a bulk insert ({args.bulk_rows} - {small} rows), of unique names and colliding ones "
        "(20 users to a name, set against the per-row trigger's unique names)"
    )
    print(f"{'config':<13}{'signup':>12}{'':>16}{'bulk row':>12}{'':>16}{'colliding row':>14}")
    base, bulk_base = per.get("per-row"), per_row["bulk"].get("per-row")
    for config in configs:
        value = per.get(config)
        line = f"{config:<13}" + (
            f"{value:>12,.0f}{ratio(value, base):>16}" if value is not None else f"{'':>28}"
        )
        for workload, rows in per_row.items():
            width = 12 if workload == "bulk" else 14
            if config in rows:
                line += f"{rows[config]:>{width},.0f}{ratio(rows[config], bulk_base):>16}"
            else:
                line += f"{'':>{width + 16}}"
        print(line)
    return 0


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.3f}\N{MULTIPLICATION SIGN} per-row" if base else ""


if __name__ == "__main__":
    sys.exit(main())

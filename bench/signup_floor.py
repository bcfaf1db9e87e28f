"""What each of the sign-up trigger's guarantees costs, in server instructions (callgrind).

bench/signup_instructions.py compares configurations; this takes one profileguard configuration
(``profileguard``, the default mapping, or ``pg-same-map``, the per-row trigger's own) and
measures its trigger with guarantees taken out, each in its own database of one cluster, beside
the documented per-row trigger: the full trigger; the floor (every guarantee below taken out: the
set-based statement trigger alone); and the floor with each guarantee put back on its own. The
guarantees:

* ``exception``: the exception block that keeps a failing profile from failing the sign-up;
* ``trimming``: mapped values trimmed and empty ones made NULL (``nullif(btrim(v), '')``);
* ``settings``: the SET clauses beyond ``search_path`` (``jit``, ``enable_seqscan``, the lock
  budget's ``lock_timeout``);
* ``sync``: the UPDATE triggers that keep profiles in step (the role update fetches the old row
  for them).

The variants are made by editing the installed trigger function (pg_get_functiondef) and
dropping triggers: they are measurements, never installed anywhere else. Each database holds
``--existing`` users first, as in bench/signup_instructions.py. It exits 0 whatever the figures.

Run (as root it runs the server as ``postgres``)::

    .venv/bin/python bench/signup_floor.py                          # pg-same-map
    .venv/bin/python bench/signup_floor.py --config profileguard    # the default mapping
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
from benchdb import log
from psycopg.conninfo import make_conninfo
from signup import BULK, PROFILEGUARD_CONFIGS, set_trigger
from signup_instructions import Cluster, find_bindir, instructions

from profileguard import sql as sqlfiles
from profileguard.config import load_settings
from profileguard.install import install

GUARANTEES = ("exception", "trimming", "settings", "sync")
# The first try's branch of the loop's exception block, and what follows the branches.
_BLOCK = re.compile(
    r"\n        begin\n            if not v_retry then\n(.*?)"
    r"\n            else\n.*?\n            end if;\n"
    r"(.*?            return null;\n)        exception ",
    re.S,
)
_TRIM = re.compile(r"NULLIF\(btrim\(([^()]*)\), ''\)")
_SETTINGS = re.compile(r" SET (?:jit|enable_seqscan|lock_timeout) TO '[^']*'\n")


def _without_exception(body: str) -> str:
    """The first try's statements alone, outside any exception block."""
    head = body[: body.index("\nbegin\n") + 1]
    found = _BLOCK.search(body)
    if found is None:
        raise RuntimeError("the trigger's exception block was not found")
    return f"{head}begin\n{found.group(1)}\n{found.group(2)}end\n$function$"


EDITS: dict[str, Callable[[str], str]] = {
    "exception": _without_exception,
    "trimming": lambda body: _TRIM.sub(r"(\1)", body),
    "settings": lambda body: _SETTINGS.sub("", body),
}


def take_out(conn: psycopg.Connection, guarantees: set[str]) -> None:
    """Take `guarantees` out of the installed sign-up trigger."""
    row = conn.execute(
        "select pg_get_functiondef('profileguard.on_identity_insert'::regproc)"
    ).fetchone()
    assert row is not None
    body = str(row[0])
    for name in GUARANTEES:
        if name in guarantees and name in EDITS:
            edited = EDITS[name](body)
            if edited == body:
                raise RuntimeError(f"{name}: nothing to take out of the trigger")
            body = edited
    conn.execute(body)
    if "sync" in guarantees:
        conn.execute("drop trigger profileguard_after_update_row on auth.users")
        conn.execute("drop trigger profileguard_after_update on auth.users")


def variants() -> dict[str, set[str]]:
    """Each variant's name and the guarantees it takes out."""
    every = set(GUARANTEES)
    named = {"full": set(), "floor": every}
    named.update({f"floor + {g}": every - {g} for g in GUARANTEES})
    return named


def build(url: str, database: str, config: str, out: set[str] | None, existing: int) -> None:
    """Database `database`: the Supabase schema, `config`'s trigger (per-row when `out` is
    None) less the guarantees in `out`, and `existing` users inserted through it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'create database "{database}"')
    db_url = make_conninfo(url, dbname=database)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sqlfiles.read("fixtures/supabase_auth.sql"))
    install(load_settings(env={}, database_url=db_url), create_profile_table=True)
    set_trigger(db_url, "per-row" if out is None else config)
    with psycopg.connect(db_url, autocommit=True) as conn:
        if out:
            take_out(conn, out)
        if existing:
            conn.execute(BULK.replace("%s", str(existing)).replace("'bulk_'", "'old_'"))
        conn.execute("vacuum analyze")
        conn.execute("checkpoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default="pg-same-map", choices=PROFILEGUARD_CONFIGS)
    parser.add_argument("--signups", type=int, default=200, help="signups of the measured run")
    parser.add_argument("--warmup", type=int, default=20, help="signups of the run subtracted")
    parser.add_argument("--existing", type=int, default=20000, help="users there before")
    parser.add_argument("--bindir", type=Path, default=None, help="PostgreSQL server binaries")
    args = parser.parse_args(argv)
    if args.signups <= args.warmup or args.warmup < 0:
        parser.error("--signups must exceed --warmup (and --warmup be >= 0)")
    named: dict[str, set[str] | None] = {"per-row": None, **variants()}
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pg_signup_floor_") as tmp:
        cluster = Cluster(Path(tmp), args.bindir or find_bindir())
        log(f"initdb in {tmp}")
        cluster.initdb()
        with cluster.server() as url:
            with psycopg.connect(url) as conn:
                row = conn.execute("select version(), current_setting('jit')").fetchone()
            for index, (name, out) in enumerate(named.items()):
                log(f"building {name}")
                build(url, f"v{index}", args.config, out, args.existing)
        for index, name in enumerate(named):
            low = instructions(cluster, cluster.data, f"v{index}", args.warmup, None)
            high = instructions(cluster, cluster.data, f"v{index}", args.signups, None)
            per[name] = (high - low) / (args.signups - args.warmup)
            log(f"{name}: {per[name]:,.0f} instructions per signup")
    assert row is not None
    print(f"{row[0]}; jit={row[1]}")
    print(
        f"{args.config}: instructions per signup (callgrind, single-user backend, "
        f"{args.existing} users there before, {args.signups} - {args.warmup} signups)"
    )
    base, floor = per["per-row"], per["floor"]
    for name, value in per.items():
        extra = f"{value - floor:+10,.0f} over the floor" if name.startswith("floor +") else ""
        times = f"{value / base:.3f}\N{MULTIPLICATION SIGN}"
        print(f"{name:<22}{value:>12,.0f}{times:>10} per-row  {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

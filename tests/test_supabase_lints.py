"""Supabase's own linters on a fresh install: `supabase db advisors` (the splinter lints) and
`supabase db lint` (plpgsql_check), run by the pinned Supabase CLI that .ci/install-deps puts in
.ci/node_modules, against the test database with --db-url.

The database is Supabase-shaped, holds profileguard with the Supabase-style profile table (as
each installer), and exposes `public` to the API as a Supabase project does (pgrst.db_schemas),
so the lints about exposed objects look at it. The advisors may report nothing but unused
indexes (a fresh install has run no query yet); plpgsql_check nothing at level warning or above.
The advisors run on both servers. plpgsql_check exists on the PostgreSQL pass only: the tests
marked `plpgsql_check` are deselected on the embedded server, which has no such extension.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from conftest import SUPABASE_POSTGRES, TestDB
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

CI_DIR = Path(__file__).resolve().parents[1] / ".ci"
SUPABASE = CI_DIR / "node_modules" / ".bin" / "supabase"
# What a fresh install may be told: indexes no query has used yet.
ALLOWED_ADVICE = {"unused_index"}
# Where hosted Supabase keeps extensions; its `postgres` searches it.
EXTENSIONS = "extensions"


def cli_url(conninfo: str) -> str:
    """`conninfo` as a URL the CLI takes: every parameter in the query string (the host too, so
    a Unix socket directory works), and no TLS, which a plain server does not offer."""
    params = conninfo_to_dict(conninfo)
    dbname = str(params.pop("dbname"))
    return f"postgresql:///{quote(dbname, safe='')}?{urlencode({**params, 'sslmode': 'disable'})}"


def supabase(db: TestDB, tmp_path: Path, *args: str) -> tuple[list[dict[str, Any]], str]:
    """Run `supabase <args> --db-url <the installer's connection> --output-format json`; its
    results and what it said on stderr."""
    assert SUPABASE.exists(), f"no Supabase CLI at {SUPABASE}; run: .ci/install-deps"
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # the CLI keeps state in ~/.supabase
        "SUPABASE_TELEMETRY_DISABLED": "1",
        "DO_NOT_TRACK": "1",
    }
    command = [str(SUPABASE), *args, "--db-url", cli_url(db.url), "--output-format", "json"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"supabase {' '.join(args)} failed:\n{done.stderr}"
    results: list[dict[str, Any]] = json.loads(done.stdout)["results"]
    return results, done.stderr


@pytest.fixture
def linted(installed: TestDB) -> TestDB:
    """`installed`, with `public` exposed to the API as in a Supabase project."""
    with installed.connect_admin() as conn:
        conn.execute(
            sql.SQL("alter database {} set pgrst.db_schemas = 'public'").format(
                sql.Identifier(str(conninfo_to_dict(installed.url)["dbname"]))
            )
        )
    return installed


def with_plpgsql_check(db: TestDB) -> TestDB:
    """Make plpgsql_check usable by the installer the way `supabase db lint` expects it.

    The CLI runs `create extension if not exists plpgsql_check` in a transaction it rolls back,
    then calls plpgsql_check_function unqualified: a superuser needs nothing more; Supabase's
    `postgres` (not a superuser) needs the extension created beforehand (Supabase's dashboard
    puts it in schema `extensions`) in a schema it searches.
    """
    available = db.scalar(
        "select exists (select from pg_available_extensions where name = 'plpgsql_check')"
    )
    assert available, "no plpgsql_check on this server; run: .ci/install-deps"
    if db.installer != "supabase_postgres":
        return db
    dbname = str(conninfo_to_dict(db.url)["dbname"])
    with db.connect_admin() as conn:
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(EXTENSIONS)))
        conn.execute(
            sql.SQL("create extension if not exists plpgsql_check schema {}").format(
                sql.Identifier(EXTENSIONS)
            )
        )
        conn.execute(
            sql.SQL("grant usage on schema {} to {}").format(
                sql.Identifier(EXTENSIONS), sql.Identifier(SUPABASE_POSTGRES)
            )
        )
        conn.execute(
            sql.SQL("alter role {} in database {} set search_path = '$user', public, {}").format(
                sql.Identifier(SUPABASE_POSTGRES),
                sql.Identifier(dbname),
                sql.Identifier(EXTENSIONS),
            )
        )
    return db


def advice_lines(findings: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {f['name']} ({f['level']}) {f['metadata'].get('schema')}.{f['metadata'].get('name')}:"
        f" {f['detail']}"
        for f in findings
    )


def lint_lines(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        for issue in result["issues"]:
            where = "; ".join(
                str(part)
                for part in (
                    issue.get("detail"),
                    issue.get("context"),
                    (issue.get("query") or {}).get("text"),
                )
                if part
            )
            lines.append(
                f"  {result['function']} ({issue['level']}) {issue['message']}"
                + (f" [{where}]" if where else "")
            )
    return "\n".join(lines)


def test_advisors_report_nothing_but_unused_indexes(linted: TestDB, tmp_path: Path) -> None:
    findings, _ = supabase(linted, tmp_path, "db", "advisors", "--level", "info")
    offending = [f for f in findings if f["name"] not in ALLOWED_ADVICE]
    assert not offending, (
        f"{len(offending)} findings of `supabase db advisors --level info`:\n"
        + advice_lines(offending)
    )
    # The advisors did look at profileguard: its indexes are there, unused so far.
    assert any(f["metadata"].get("schema") == "profileguard" for f in findings), findings


def test_advisors_see_what_the_api_exposes(linted: TestDB, tmp_path: Path) -> None:
    """The exposure lints are on: a client-reachable table without RLS is reported."""
    with linted.connect() as conn:
        conn.execute("create table public.lint_probe (id integer primary key)")
        conn.execute("grant select on public.lint_probe to anon, authenticated")
    findings, _ = supabase(linted, tmp_path, "db", "advisors", "--level", "info")
    assert any(
        f["name"] == "rls_disabled_in_public" and f["metadata"].get("name") == "lint_probe"
        for f in findings
    ), advice_lines(findings)


@pytest.mark.plpgsql_check
def test_plpgsql_check_reports_nothing_on_profileguard(linted: TestDB, tmp_path: Path) -> None:
    results, stderr = supabase(
        with_plpgsql_check(linted), tmp_path, "db", "lint", "--level", "warning"
    )
    assert "Linting schema: profileguard" in stderr, stderr
    offending = [r for r in results if r["issues"]]
    assert not offending, (
        f"{sum(len(r['issues']) for r in offending)} issues of "
        f"`supabase db lint --level warning`:\n" + lint_lines(offending)
    )


@pytest.mark.plpgsql_check
def test_plpgsql_check_reports_a_faulty_function(linted: TestDB, tmp_path: Path) -> None:
    """plpgsql_check does run on the functions of the database under test."""
    with linted.connect() as conn:
        conn.execute(
            "create function public.lint_probe() returns integer language plpgsql as"
            " $$ begin return (select count(*) from public.no_such_table); end $$"
        )
    results, _ = supabase(with_plpgsql_check(linted), tmp_path, "db", "lint", "--level", "warning")
    assert any(
        r["function"] == "public.lint_probe"
        and any(i["level"] == "error" and "no_such_table" in i["message"] for i in r["issues"])
        for r in results
    ), lint_lines(results)

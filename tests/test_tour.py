"""The README's "A five-minute tour on your own database", command by command, on a database set
up as the tour assumes: a profile table, the documented `on_auth_user_created` trigger, and users
from before it who have no profile. The commands are read from the README's code block."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import TestDB, wait_for
from monitoring import free_port
from test_web import fetch

from profileguard.errors import ExitCode

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## A five-minute tour on your own database"

SUPABASE_START = """
create table public.profiles (
  id uuid not null references auth.users on delete cascade primary key,
  full_name text
);
alter table public.profiles enable row level security;
create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into public.profiles (id, full_name)
  values (new.id, new.raw_user_meta_data ->> 'full_name');
  return new;
end;
$$;
"""
LEGACY_TRIGGER = """
create trigger on_auth_user_created after insert on auth.users
  for each row execute procedure public.handle_new_user();
"""


def tour() -> list[tuple[list[str], str]]:
    """Each `profileguard …` line of the tour's code block: its words and its comment."""
    section = README.read_text().split(HEADING, 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    steps = []
    for line in block.splitlines():
        if line.startswith("profileguard "):
            command, _, comment = line.partition("#")
            steps.append((shlex.split(command), comment.strip()))
    return steps


def expected_exit(command: str, comment: str) -> int:
    """The exit code the README gives: the one its comment names for the healthy outcome
    ("exit 0 healthy"); for audit, on a database with something wrong (users without a profile),
    the exit-code table's FINDINGS; else success."""
    named = re.search(r"exit (\d+) healthy", comment)
    if named:
        return int(named.group(1))
    return int(ExitCode.FINDINGS if command == "audit" else ExitCode.OK)


def environment(db: TestDB) -> dict[str, str]:
    """The README's setting: the database in DATABASE_URL, nothing else of ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }
    env["DATABASE_URL"] = db.url
    return env


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "profileguard", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def run_until_up(
    args: list[str], env: dict[str, str], cwd: Path, up: Callable[[], bool]
) -> tuple[int, str, str]:
    """A command that runs until stopped: start it, wait until `up()` holds, stop it with
    SIGTERM as a service manager would; its exit code and output."""
    process = start(args, env, cwd)
    try:
        assert wait_for(lambda: up() or process.poll() is not None, timeout=60)
        assert process.poll() is None, process.communicate(timeout=30)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
    return process.returncode, stdout, stderr


def test_every_command_of_the_readme_tour_exits_as_the_readme_says(
    db: TestDB, tmp_path: Path
) -> None:
    steps = tour()
    assert [words[1] for words, _ in steps] == [
        "audit",
        "install",
        "backfill",
        "backfill",
        "install",
        "worker",
        "status",
        "serve",
    ], "the tour changed: follow it here"
    with db.connect() as conn:
        conn.execute(SUPABASE_START)
    db.bulk_signup(50)  # users from before the trigger: no profile
    with db.connect() as conn:
        conn.execute(LEGACY_TRIGGER)
    env = environment(db)

    def profiles() -> int:
        return int(db.scalar("select count(*) from public.profiles"))

    for words, comment in steps:
        args = words[1:]
        if args[0] == "worker":
            code, _, stderr = run_until_up(
                args,
                env,
                tmp_path,
                lambda: bool(db.scalar("select count(*) from profileguard.workers")),
            )
        elif args[0] == "serve":
            port = free_port()  # the README's 8787 may be taken here

            def healthy(port: int = port) -> bool:
                try:
                    return fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200
                except OSError:
                    return False

            code, _, stderr = run_until_up([*args, "--port", str(port)], env, tmp_path, healthy)
        else:
            done = subprocess.run(
                [sys.executable, "-m", "profileguard", *args],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
                timeout=240,
                stdin=subprocess.DEVNULL,
            )
            code, stderr = done.returncode, done.stderr
        assert code == expected_exit(args[0], comment), (words, code, stderr)
        if args == ["backfill", "--dry-run"]:
            assert profiles() == 0  # how many would be created; nothing is
        if args == ["backfill"]:
            assert profiles() == 50
    # The tour's end: the old trigger taken over, every user with a profile, a new one too.
    db.signup({"full_name": "After The Tour"})
    assert profiles() == 51
    assert db.scalar("select count(*) from profileguard.replaced_triggers") == 1

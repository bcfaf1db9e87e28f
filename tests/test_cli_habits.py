"""Habits of the command line: standard help, SQL to copy, worker logs and registration."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
from typing import Any

import pytest
import typer
from conftest import TestDB
from test_cli import cli
from test_worker import wait_for
from test_worker_process import FAST, worker_process
from typer.testing import CliRunner

from profileguard import logs
from profileguard.cli import app

COMMANDS = sorted(name for name in (c.name or c.callback.__name__ for c in app.registered_commands))


def test_help_shows_choices_and_no_python_type_names() -> None:
    audit = cli(None, "audit", "--help", env={"COLUMNS": "200"})
    assert audit.returncode == 0, audit.stderr
    assert "--fail-on" in audit.stdout and "[info|warning|error|never]" in audit.stdout
    worker = cli(None, "worker", "--help", env={"COLUMNS": "200"})
    assert "[debug|info|warning|error]" in worker.stdout and "[text|json]" in worker.stdout
    for command in ["--help", *(f"{name} --help" for name in COMMANDS)]:
        shown = cli(None, *command.split(), env={"COLUMNS": "200"})
        assert shown.returncode == 0, (command, shown.stderr)
        for python_type in ("<bool>", "<str>", "<int>", "<float>", "<list[str]>"):
            assert python_type not in shown.stdout, (command, python_type)
    assert cli(None, "audit", "--fail-on", "loud").returncode == 2


def test_help_flows_each_paragraph_as_one_text() -> None:
    """A docstring's line breaks are not the help's: the command list and each command's help
    rewrap every paragraph to the width, with no break left where the source broke its lines."""
    root: Any = typer.main.get_command(app)
    listing = cli(None, "--help", env={"COLUMNS": "400"})
    assert listing.returncode == 0, listing.stderr
    for name, command in root.commands.items():
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph.strip(), (name, paragraph)
        first = (command.help or "").split("\n\n")[0]
        assert first in listing.stdout, (name, first)


def test_audit_fix_sql_is_printed_unbroken_and_is_in_the_json(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "create table public.profiles (id uuid primary key"
            " references auth.users (id), full_name text)"
        )
    data = json.loads(cli(db, "audit", "--json").stdout)
    fixes = {f["code"]: f["fix"] for f in data["findings"]}
    fix = fixes["fk_blocks_user_deletion"]
    assert fix and any(len(line) > 60 for line in fix.splitlines())

    shown = cli(db, "audit", env={"COLUMNS": "60"})
    assert shown.returncode == 0, shown.stderr
    printed = shown.stdout.splitlines()
    assert "fix for fk_blocks_user_deletion:" in printed
    for line in fix.splitlines():
        assert f"    {line}" in printed  # whole, on one line: copy-paste runs it


def test_worker_json_logs_and_a_clean_stop_deregisters(installed: TestDB) -> None:
    with worker_process(
        installed.url, *FAST, "--worker-id", "tidy", "--log-format", "json", "--log-level", "debug"
    ) as proc:
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select count(*) from profileguard.workers where worker_id = 'tidy'"
                )
                == 1
            )
        )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert records, stderr
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(r["logger"].startswith("profileguard.") for r in records)
    started = [r for r in records if r["message"] == "worker started"]
    assert started and started[0]["worker_id"] == "tidy"
    assert any(r["message"] == "worker stopped" and r.get("signal") == "SIGTERM" for r in records)
    assert (
        installed.scalar("select count(*) from profileguard.workers where worker_id = 'tidy'") == 0
    )


def test_json_formatter_writes_one_object_per_line_with_the_extra_fields() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    try:
        log = logging.getLogger("profileguard.repair")
        log.info("batch repaired", extra={"repaired": 40, "batch": 3})
        log.debug("not at info level")
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            log.exception("breaker opened", extra={"breaker": "open"})
    finally:
        logs.configure("warning", "text")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "batch repaired" and first["level"] == "info"
    assert (first["repaired"], first["batch"]) == (40, 3)
    assert second["breaker"] == "open" and "RuntimeError: boom" in second["exc_info"]
    with pytest.raises(ValueError):
        logs.configure("loud", "json")


def test_console_script_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from profileguard.cli import main; main()", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("profileguard ")


def _float_options() -> list[tuple[str, str]]:
    """(command, option) for every option of the command line that takes a float."""
    root: Any = typer.main.get_command(app)
    return [
        (name, param.opts[0])
        for name, command in root.commands.items()
        for param in command.params
        if param.param_type_name == "option" and param.type_descriptor.annotation is float
    ]


FLOAT_OPTIONS = _float_options()
WIDE = {"COLUMNS": "300"}  # usage errors on one line


def test_the_float_options_are_the_ones_checked_below() -> None:
    assert set(FLOAT_OPTIONS) >= {
        ("backfill", "--target-seconds"),
        ("backfill", "--max-rows-per-second"),
        ("backfill", "--lock-timeout"),
        ("backfill", "--statement-timeout"),
        ("worker", "--incremental-interval"),
        ("worker", "--full-interval"),
    }


@pytest.mark.parametrize(("command", "option"), FLOAT_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-1", "1e12"])
def test_every_float_option_refuses_non_finite_and_out_of_range_numbers(
    command: str, option: str, value: str
) -> None:
    """A usage error (exit 2) that states the range, before any database is reached."""
    result = CliRunner().invoke(app, [command, option, value], env=WIDE)
    assert result.exit_code == 2, result.output
    text = result.output
    assert f"Invalid value for '{option}': must be a number " in text, text
    assert re.search(r"(from [\d.,]+ to|more than [\d.,]+ and at most) [\d.,]+, not ", text), text


def test_a_float_option_in_range_is_taken_and_out_of_range_writes_nothing(
    installed: TestDB,
) -> None:
    for value in ("nan", "inf"):
        refused = cli(installed, "backfill", "--target-seconds", value, env=WIDE)
        assert refused.returncode == 2, refused.stderr
        assert "invalid input syntax" not in refused.stderr
        assert f"more than 0 and at most 600, not {value}" in refused.stderr
    refused = cli(installed, "backfill", "--max-rows-per-second", "inf", env=WIDE)
    assert refused.returncode == 2 and "1,000,000,000" in refused.stderr, refused.stderr
    assert installed.scalar("select count(*) from profileguard.backfill_runs") == 0
    taken = cli(installed, "backfill", "--target-seconds", "0.25", "--lock-timeout", "0.001")
    assert taken.returncode == 0, taken.stderr
    assert installed.scalar("select count(*) from profileguard.backfill_runs") == 1

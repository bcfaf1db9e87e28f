"""The `profileguard` command line: `app` (Typer) and `main` (the console-script entry point)."""

# isort: off
# The command modules register their commands on import, in the order --help lists them.
from profileguard.cli import setup, repair, observe, backfill
from profileguard.cli.app import app, main

# isort: on

__all__ = ["app", "backfill", "main", "observe", "repair", "setup"]

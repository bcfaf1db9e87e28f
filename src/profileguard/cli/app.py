"""The `profileguard` Typer application: global options, error handling, the help display.

Commands live in setup.py, repair.py, backfill.py and observe.py; each parses its arguments,
calls the library and renders the result (render.py). Exit codes come from one table,
`profileguard.errors.ExitCode` (listed in the README).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import psycopg
import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from profileguard import __version__
from profileguard.cli.render import err, out
from profileguard.config import Settings, load_settings
from profileguard.db import translate
from profileguard.errors import ProfileGuardError

P = ParamSpec("P")
R = TypeVar("R")

# How an option's value is shown in --help, from the type Typer reports (the click names).
METAVARS = {
    "bool": "",
    "str": "TEXT",
    "int": "INTEGER",
    "float": "FLOAT",
    "int range": "INTEGER RANGE",
    "float range": "FLOAT RANGE",
    "path": "PATH",
}


def _standard_type(param: Any, ctx: Any) -> str:
    """TEXT, INTEGER, …, or the choices as [a|b|c]; nothing for a flag."""
    if getattr(param, "is_flag", False):
        return ""
    label = param.display_type(ctx)[1:-1]
    label = label.removeprefix("list[").removesuffix("]") if "list[" in label else label
    return f"[{label}]" if "|" in label else METAVARS.get(label, label.upper())


def _standard_metavars(command: Any, ctx: Any) -> None:
    """Show values the standard way (TEXT, [a|b|c], nothing for flags), not <bool>, <str>."""
    for param in command.get_params(ctx):
        if param.param_type_name == "argument":
            # An argument's metavar is its name in the usage line: only its type column changes.
            param.display_type_rich = functools.partial(_standard_type, param)
        elif param.metavar is None:
            param.metavar = _standard_type(param, ctx)


class StandardCommand(TyperCommand):
    """A command whose --help shows option values the standard way."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _standard_metavars(self, ctx)
        super().format_help(ctx, formatter)


class StandardGroup(TyperGroup):
    """The command group, with the same help display for the global options."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _standard_metavars(self, ctx)
        super().format_help(ctx, formatter)


app = typer.Typer(
    name="profileguard",
    cls=StandardGroup,
    help="Every user has a profile: install, run and inspect profileguard in a PostgreSQL "
    "or Supabase database. The database comes from --database-url, DATABASE_URL or "
    "profileguard.toml.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def flowed(text: str) -> str:
    """Help text with each paragraph on one line, for the help display to wrap to the width: the
    line breaks of a docstring would otherwise stay, leaving short lines in the middle."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def command(panel: str, **options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a command in a help panel, with standard help and error handling."""

    def register(func: Callable[P, R]) -> Callable[P, R]:
        wrapped = handle_errors(func)
        text = options.pop("help", None) or func.__doc__
        if text:
            options["help"] = flowed(text)
        app.command(cls=StandardCommand, rich_help_panel=panel, **options)(wrapped)
        return wrapped

    return register


@dataclass
class State:
    """Options given before the command."""

    database_url: str | None = None
    config: Path | None = None

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(self.config, database_url=self.database_url, **overrides)


def state(ctx: typer.Context) -> State:
    obj = ctx.obj
    return obj if isinstance(obj, State) else State()


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print errors (driver errors translated) as "error: … / hint: …" and exit with their code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ProfileGuardError, psycopg.Error) as exc:
            exc = translate(exc)
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.sqlstate:
                err.print(f"sqlstate: {exc.sqlstate}", highlight=False)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        out.print(f"profileguard {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            "-d",
            help="PostgreSQL URL (default: PROFILEGUARD_DATABASE_URL, DATABASE_URL, "
            "profileguard.toml, then the PG* variables).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Configuration file (default: ./profileguard.toml)."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """Global options."""
    ctx.obj = State(database_url, config)


def main() -> None:
    """Console-script entry point."""
    app()

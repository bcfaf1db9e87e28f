"""How the command line shows results: JSON, field tables, and SQL to copy."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True, soft_wrap=True)  # errors are never cut into lines mid-text


def duration(seconds: float) -> str:
    """An age or duration in its two largest units, for people: 45s, 3m 20s, 2h 3m, 41d 9h
    (JSON keeps the seconds)."""
    left = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
        elif parts:
            break
        if len(parts) == 2:
            break
    return " ".join(parts) or "0s"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_fields(title: str, data: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        table.add_row(key.replace("_", " "), "" if value is None else str(value))
    out.print(table)


def print_sql(title: str, statement: str) -> None:
    """SQL as a block of its own, never wrapped or styled, so it can be copied and run."""
    out.print(title, highlight=False, soft_wrap=True)
    for line in statement.strip().splitlines():
        out.print(f"    {line}", highlight=False, markup=False, soft_wrap=True)

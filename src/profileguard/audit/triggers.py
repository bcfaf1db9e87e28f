"""Checks of the triggers on the identity table: legacy triggers that also create profiles,
and other functions that write the profile table."""

from __future__ import annotations

import re
import shlex
from typing import Any

from profileguard.audit.report import Context, Finding
from profileguard.catalog import table_oid
from profileguard.config import TableRef
from profileguard.install.takeover import MARKER
from profileguard.installation import TRIGGER_NAME, UPDATE_TRIGGER_NAMES

EXCEPTION_HANDLER = re.compile(r"\bexception\s+when\b", re.IGNORECASE)


def _writes_pattern(ref: TableRef) -> str:
    """A regular expression matching an INSERT/UPDATE/MERGE of `ref`, qualified or not."""
    name = ref.name.replace("$", r"\$")
    schema_name = ref.schema.replace("$", r"\$")
    return (
        r"(insert\s+into|update|merge\s+into)\s+(only\s+)?"
        rf'("?{schema_name}"?\s*\.\s*)?"?{name}"?([^a-z0-9_$]|$)'
    )


def check_competing_triggers(ctx: Context) -> list[Finding]:
    """Other triggers on the identity table, and those of them that write the profile table."""
    if ctx.identity is None:
        return []
    oid = table_oid(ctx.conn, ctx.settings.identity)
    writes = re.compile(_writes_pattern(ctx.settings.profile), re.IGNORECASE)
    qualified = re.compile(
        rf'"?{re.escape(ctx.settings.profile.schema)}"?\s*\.\s*"?{re.escape(ctx.settings.profile.name)}',
        re.IGNORECASE,
    )
    found: list[Finding] = []
    others = []
    for trig in ctx.rows("identity_triggers", {"oid": oid}):
        if trig["name"] == TRIGGER_NAME or trig["name"] in UPDATE_TRIGGER_NAMES:
            continue
        if MARKER in trig["source"]:
            found.append(
                Finding(
                    "replaced_trigger",
                    "info",
                    f"trigger {trig['name']} was taken over: its function {trig['function']} is a "
                    "no-op (profileguard uninstall restores it)",
                    {"trigger": trig["name"], "function": trig["function"]},
                )
            )
            continue
        if not writes.search(trig["source"]):
            others.append(
                {
                    "trigger": trig["name"],
                    "function": trig["function"],
                    "enabled": trig["mode"] != "D",
                }
            )
            continue
        found.append(_writer_finding(ctx, trig, qualified))
    if others:
        found.append(
            Finding(
                "identity_triggers",
                "info",
                f"other triggers on {ctx.settings.identity} (they do not write profiles)",
                {"triggers": others},
            )
        )
    found.extend(_profile_writers(ctx, found))
    return found


def _writer_finding(ctx: Context, trig: dict[str, Any], qualified: re.Pattern[str]) -> Finding:
    """A trigger on the identity table that writes the profile table: taken out of the way
    (disabled or never firing), or competing with profileguard, with the risks it carries."""
    evidence = {
        "trigger": trig["name"],
        "function": trig["function"],
        "security_definer": trig["security_definer"],
        "fixed_search_path": trig["fixed_search_path"],
        "for_each_row": trig["for_each_row"],
        "on_update": trig["on_update"],
        "handles_errors": bool(EXCEPTION_HANDLER.search(trig["source"])),
    }
    if trig["mode"] == "D" or trig["never_fires"]:
        return Finding(
            "replaced_trigger",
            "info",
            f"trigger {trig['name']} writes {ctx.settings.profile} and is "
            + ("disabled" if trig["mode"] == "D" else "re-created WHEN (false): it never fires"),
            evidence,
        )
    risks = []
    if ctx.enabled:
        risks.append("profileguard is enabled too: two paths create the same profile")
    if not trig["security_definer"]:
        risks.append("not SECURITY DEFINER: the auth role may lack rights (42501)")
    if not trig["fixed_search_path"] and not qualified.search(trig["source"]):
        risks.append("unqualified table name without a fixed search_path (42P01)")
    if trig["on_update"]:
        risks.append("also fires on UPDATE: can fail logins")
    if not evidence["handles_errors"]:
        evidence["note"] = "any error in it aborts the signup ('Database error saving new user')"
    evidence["risks"] = risks
    return Finding(
        "competing_trigger",
        "error" if risks else "warning",
        f"trigger {trig['name']} on {ctx.settings.identity} also creates profiles",
        evidence,
        f"profileguard install --replace-trigger {shlex.quote(trig['name'])}",
    )


def _profile_writers(ctx: Context, found: list[Finding]) -> list[Finding]:
    """Functions other than the triggers already found that write the profile table."""
    trigger_functions = {str(f.evidence["function"]) for f in found if "function" in f.evidence}
    writers = [
        w
        for w in ctx.rows("profile_writers", {"pattern": _writes_pattern(ctx.settings.profile)})
        if w["function"] not in trigger_functions
    ]
    if writers:
        return [
            Finding(
                "profile_writers",
                "info",
                f"other functions that write {ctx.settings.profile}",
                {"functions": [w["function"] for w in writers]},
            )
        ]
    return []

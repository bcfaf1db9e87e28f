"""Checks of the triggers on the identity table: legacy triggers that also create profiles,
and other functions that write the profile table."""

from __future__ import annotations

import re
import shlex
from typing import Any

from profileguard.audit.report import Context, Finding
from profileguard.install.takeover import identity_triggers, writes_pattern

EXCEPTION_HANDLER = re.compile(r"\bexception\s+when\b", re.IGNORECASE)


def check_competing_triggers(ctx: Context) -> list[Finding]:
    """Other triggers on the identity table, and those of them that write the profile table."""
    if ctx.identity is None:
        return []
    qualified = re.compile(
        rf'"?{re.escape(ctx.settings.profile.schema)}"?\s*\.\s*"?{re.escape(ctx.settings.profile.name)}',
        re.IGNORECASE,
    )
    found: list[Finding] = []
    others = []
    for trig in identity_triggers(ctx.conn, ctx.settings.identity, ctx.settings.profile):
        if trig["role"] == "taken_over":
            found.append(
                Finding(
                    "replaced_trigger",
                    "info",
                    f"trigger {trig['name']} was taken over: its function {trig['function']} is a "
                    "no-op (profileguard uninstall restores it)",
                    {"trigger": trig["name"], "function": trig["function"]},
                )
            )
        elif trig["role"] == "other":
            others.append(
                {
                    "trigger": trig["name"],
                    "function": trig["function"],
                    "enabled": trig["mode"] != "D",
                }
            )
        else:
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
    if trig["role"] == "inactive":
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
    fix = f"profileguard install --replace-trigger {shlex.quote(trig['name'])}"
    if trig["role"] == "kept":
        # Chosen with `install --keep-trigger`: reported, with its risks, but not an error.
        evidence["kept"] = True
        return Finding(
            "kept_trigger",
            "warning",
            f"trigger {trig['name']} on {ctx.settings.identity} also creates profiles: kept "
            "beside profileguard by `install --keep-trigger`",
            evidence,
            fix,
        )
    return Finding(
        "competing_trigger",
        "error" if risks else "warning",
        f"trigger {trig['name']} on {ctx.settings.identity} also creates profiles",
        evidence,
        fix,
    )


def _profile_writers(ctx: Context, found: list[Finding]) -> list[Finding]:
    """Functions other than the triggers already found that write the profile table."""
    trigger_functions = {str(f.evidence["function"]) for f in found if "function" in f.evidence}
    writers = [
        w
        for w in ctx.rows("profile_writers", {"pattern": writes_pattern(ctx.settings.profile)})
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

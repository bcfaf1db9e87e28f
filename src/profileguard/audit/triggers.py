"""Checks of the triggers on the identity table: legacy triggers that also create profiles,
other functions that write the profile table, and whether the mapping installed is what a legacy
trigger taken over did."""

from __future__ import annotations

import re
import shlex
from typing import Any

from profileguard.audit.report import Context, Finding
from profileguard.install.takeover import identity_triggers, writes_pattern
from profileguard.mapping.legacy import combined, recorded

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


def check_legacy_mapping(ctx: Context) -> list[Finding]:
    """A legacy trigger taken over whose mapping differs from the one installed: profiles made
    now differ from what the app made before (column by column), or what it did was not learned."""
    if ctx.installed is None:
        return []
    legacy = combined(recorded(ctx.conn, ctx.settings.identity, ctx.settings.profile))
    if legacy is None:
        return []
    if not legacy.complete:
        return [
            Finding(
                "legacy_mapping_unlearned",
                "warning",
                f"what trigger {legacy.trigger} filled could not be learned from its function "
                f"{legacy.function}; profiles are made by the configured mapping",
                {"trigger": legacy.trigger, "unlearned": list(legacy.unlearned)},
                f"compare [mapping] in profileguard.toml with {legacy.function} "
                "(profileguard install --check rehearses both side by side)",
            )
        ]
    config = ctx.installed.config
    installed = {str(c): list(s) for c, s in dict(config.get("mapping") or {}).items()}
    username = config.get("username_column")
    unverified = dict(config.get("username") or {}).get("unverified")
    differ: dict[str, dict[str, Any]] = {}
    for column in dict.fromkeys([*legacy.mapping, *installed]):
        was = list(legacy.mapping.get(column, ()))
        now = installed.get(column, [])
        if was != now:
            differ[column] = {"legacy": was or None, "installed": now or None}
        elif column == username and unverified != "plain":
            differ[column] = {
                "legacy": "given as sent",
                "installed": "client-chosen names get a suffix (username.unverified = 'suffix')",
            }
    if not differ:
        return []
    return [
        Finding(
            "legacy_mapping_differs",
            "warning",
            f"profiles differ from what trigger {legacy.trigger} made: "
            + ", ".join(differ)
            + " "
            + ("is" if len(differ) == 1 else "are")
            + " filled otherwise",
            {"trigger": legacy.trigger, "columns": differ},
            "to make them as before, remove [mapping] / profile.preset (and username.unverified) "
            "from profileguard.toml and run profileguard install: the learned mapping is then "
            "used; profileguard install --check compares both on sampled users",
        )
    ]

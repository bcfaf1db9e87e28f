"""Checks of the profiles: users without one, and whether the mapping fills the table."""

from __future__ import annotations

import re

from psycopg import sql

from profileguard.audit.report import Context, Finding, iso
from profileguard.catalog import table_oid
from profileguard.config import Source
from profileguard.errors import ConfigError
from profileguard.mapping import source_expr


def _backfill_sql(ctx: Context) -> str:
    s = ctx.settings
    return ctx.text(
        sql.SQL(
            "select profileguard.create_profiles(array(select u.{ik} from {identity} u "
            "where not exists (select from {profile} p where p.{pk} = u.{ik})), 'audit');"
        ).format(
            ik=sql.Identifier(s.identity.key),
            identity=ctx.identity_sql,
            profile=ctx.profile_sql,
            pk=sql.Identifier(s.profile.key),
        )
    )


def check_missing_profiles(ctx: Context) -> list[Finding]:
    """Users without a profile (count, oldest, sample), and profiles without a user."""
    if ctx.identity is None or ctx.profile is None:
        return []
    s = ctx.settings
    if s.profile.key not in ctx.profile.columns:
        return []
    parts: dict[str, sql.Composable] = {
        "identity": ctx.identity_sql,
        "profile": ctx.profile_sql,
        "identity_key": sql.Identifier(s.identity.key),
        "profile_key": sql.Identifier(s.profile.key),
    }
    created = ctx.identity.columns.get("created_at")
    parts["created_at"] = (
        sql.SQL("u.created_at")
        if created is not None and "timestamp" in created.type
        else sql.SQL("null::timestamptz")
    )
    found = []
    missing = ctx.rows("missing_profiles", parts=parts)[0]
    ctx.state["missing_profiles"] = missing["missing"]
    if missing["missing"]:
        steps = [] if ctx.installed else ["profileguard install --disabled"]
        steps.append(_backfill_sql(ctx))
        found.append(
            Finding(
                "missing_profiles",
                "error",
                f"{missing['missing']} user(s) have no profile",
                {
                    "count": missing["missing"],
                    "oldest": iso(missing["oldest"]),
                    "sample": missing["sample"],
                    "note": "for many users, `profileguard backfill` creates them"
                    " in bounded batches",
                },
                "\n".join(steps),
            )
        )
    orphans = ctx.rows("orphan_profiles", parts=parts)[0]
    if orphans["orphans"]:
        found.append(
            Finding(
                "orphan_profiles",
                "warning",
                f"{orphans['orphans']} profile(s) belong to no user",
                {
                    "count": orphans["orphans"],
                    "sample": orphans["sample"],
                    "note": "profileguard prune --dry-run lists them all;"
                    " profileguard prune removes them (recorded)"
                    if ctx.installed
                    else "after profileguard install, profileguard prune --dry-run lists them",
                },
                "profileguard prune --dry-run\nprofileguard prune"
                if ctx.installed
                else ctx.text(
                    sql.SQL(
                        "delete from {profile} p where not exists "
                        "(select from {identity} u where u.{ik} = p.{pk});"
                    ).format(
                        profile=ctx.profile_sql,
                        identity=ctx.identity_sql,
                        ik=sql.Identifier(s.identity.key),
                        pk=sql.Identifier(s.profile.key),
                    )
                ),
            )
        )
    return found


def _value_expr(sources: tuple[Source, ...]) -> sql.Composable:
    parts = [source_expr(src) for src in sources]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(parts))


def check_mapping(ctx: Context) -> list[Finding]:
    """Profile columns the mapping cannot fill, and constraints derived values may break."""
    if ctx.identity is None or ctx.profile is None:
        return []
    plan = ctx.plan()
    if isinstance(plan, ConfigError):
        return [Finding("mapping_invalid", "error", plan.message, {}, plan.hint)]
    found = []
    s = ctx.settings
    for column in ctx.profile.columns.values():
        if (
            column.name == s.profile.key
            or column.name in plan.mapping
            or not column.not_null
            or column.has_default
        ):
            continue
        found.append(
            Finding(
                "not_null_unfilled",
                "error",
                f"{s.profile}.{column.name} is NOT NULL without a default and the mapping does not "
                "fill it: every profile insert fails",
                {
                    "column": column.name,
                    "type": column.type,
                    "other_fixes": "give it a default, or map a source to it"
                    f" (mapping.{column.name})",
                },
                ctx.text(
                    sql.SQL("alter table {} alter column {} drop not null;").format(
                        ctx.profile_sql, sql.Identifier(column.name)
                    )
                ),
            )
        )
    oid = table_oid(ctx.conn, s.profile)
    username_rule = (
        plan.username_constraints
    )  # the username rule (Plan.username_constraints in mapping/plan.py): checked apart
    for column_name, sources in plan.mapping.items():
        if username_rule is not None and column_name == username_rule.column:
            continue
        column = ctx.profile.columns[column_name]
        low, high = ctx.profile.length_bounds(column_name)
        unique = column_name in ctx.profile.unique
        if not unique and low is None and high is None:
            continue
        constraints = [
            c
            for c in ctx.rows("column_constraints", {"oid": oid, "column": column_name})
            if c["kind"] == "u" or re.search(r"length\(", c["definition"])
        ]
        value = _value_expr(sources)
        counts = ctx.rows(
            "derived_violations",
            {"max_length": high, "min_length": low, "unique": unique},
            {
                "identity": ctx.identity_sql,
                "profile": ctx.profile_sql,
                "identity_key": sql.Identifier(s.identity.key),
                "profile_key": sql.Identifier(s.profile.key),
                "column": sql.Identifier(column_name),
                "value": value,
            },
        )[0]
        actions: list[sql.Composable] = [
            sql.SQL("drop constraint {}").format(sql.Identifier(c["name"])) for c in constraints
        ]
        if column.max_length is not None:
            actions.append(sql.SQL("alter column {} type text").format(sql.Identifier(column_name)))
        fix = None
        if actions:
            fix = ctx.text(
                sql.SQL("alter table {} {};").format(ctx.profile_sql, sql.SQL(", ").join(actions))
            )
        found.append(
            Finding(
                "derived_value_at_risk",
                "warning",
                f"{s.profile}.{column_name} is derived from user data but is "
                + " and ".join(
                    x
                    for x in ("unique" if unique else "", "length-bounded" if low or high else "")
                    if x
                )
                + ": a value that does not fit fails the profile insert",
                {
                    "column": column_name,
                    "sources": [str(x) for x in sources],
                    "min_length": low,
                    "max_length": high,
                    "unique": unique,
                    "users_without_profile_now_failing": {
                        "too_long": counts["too_long"],
                        "too_short": counts["too_short"],
                        "duplicate": counts["duplicate"],
                    },
                    "other_fixes": f"set username_column = '{column_name}' in profileguard.toml to "
                    "derive unique, length-fitted values",
                },
                fix,
            )
        )
    return found

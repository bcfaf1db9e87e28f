"""Install preflight: will the mapping fill this profile table? Checked before anything changes.

Two checks, inside the install transaction (or a rolled-back one for `install --check`):

* the catalog: a NOT NULL column without a default that the mapping does not fill makes every
  profile insert fail, so install refuses it (unless forced), naming the column and both fixes;
  constraints the generated names cannot be proven to satisfy are reported as warnings;
* a rehearsal: the generated INSERT runs for a sample of existing users and for synthetic
  sign-ups of each provider's shape, into temporary copies of both tables (dropped at commit).
  Nothing is written to the real tables and no trigger on the identity table fires; the only
  lock on it is the ACCESS SHARE of reading the sample. Each failure is reported with its
  SQLSTATE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from profileguard.catalog import TableFacts, inspect_table
from profileguard.config import Settings, TableRef
from profileguard.mapping import Plan, build_plan, insert_statement
from profileguard.mapping.legacy import LegacyMapping

# Existing users rehearsed; with the synthetic shapes this stays under 64 savepoints, the
# subtransactions one backend can have before every session's snapshots slow down.
SAMPLE_USERS = 40
USERS_COPY = "pg_preflight_users"
PROFILES_COPY = "pg_preflight_profiles"
LEGACY_COPY = "pg_preflight_legacy"

# Sign-ups as Supabase Auth writes them: (name, provider, email, raw_user_meta_data).
SHAPES: tuple[tuple[str, str | None, str | None, Any], ...] = (
    ("email, empty metadata", "email", "preflight.empty@example.com", {}),
    ("email, no metadata at all", "email", "preflight.null@example.com", None),
    (
        "email with a chosen username",
        "email",
        "preflight.chosen@example.com",
        {"user_name": "Preflight User", "full_name": "Preflight User"},
    ),
    ("magic link, short email", "email", "pf@example.com", {}),
    ("phone / OTP, no email", "phone", None, {}),
    ("anonymous", "anonymous", None, {}),
    (
        "google",
        "google",
        "preflight.google@gmail.com",
        {
            "name": "Ada Lovelace",
            "full_name": "Ada Lovelace",
            "email": "preflight.google@gmail.com",
            "picture": "https://lh3.googleusercontent.com/a/x",
            "email_verified": True,
        },
    ),
    (
        "github",
        "github",
        "preflight.github@example.com",
        {
            "user_name": "octocat",
            "preferred_username": "octocat",
            "full_name": "The Octocat",
            "avatar_url": "https://avatars.githubusercontent.com/u/1",
        },
    ),
    (
        "discord",
        "discord",
        "preflight.discord@example.com",
        {
            "full_name": "codejedi",
            "name": "codejedi#0",
            "custom_claims": {"global_name": "Jedi"},
            "avatar_url": "https://cdn.discordapp.com/avatars/1/x.png",
        },
    ),
    (
        "unicode and a 1 MB name",
        "github",
        "preflight.long@example.com",
        {"user_name": "\u202e" + "\U0001f984" * 3 + "x" * 1_000_000, "full_name": "Ünïcødé 👩‍💻"},
    ),
    ("no email, nothing in metadata", None, None, {}),
)


@dataclass
class Preflight:
    """What the preflight found: refusals (install stops), warnings, and rehearsal failures."""

    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rehearsed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what install would say (the mapping learned)
    # Side by side with the legacy trigger taken over: per profile column, how many rehearsed
    # profiles differ from what its function gives (see `compare`).
    legacy: str | None = None
    differences: list[dict[str, Any]] = field(default_factory=list)
    legacy_failures: int = 0

    @property
    def ok(self) -> bool:
        return not self.refusals and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "refusals": self.refusals,
            "warnings": self.warnings,
            "notes": self.notes,
            "rehearsed": self.rehearsed,
            "failures": self.failures,
            "legacy": None
            if self.legacy is None
            else {
                "trigger": self.legacy,
                "would_fail": self.legacy_failures,
                "columns": self.differences,
            },
        }

    def comparison(self) -> list[str]:
        """The side-by-side comparison as lines ('username: 89 of 89 differ')."""
        if self.legacy is None:
            return []
        lines = [
            f"{d['column']}: {d['differ']} of {d['compared']} differ" for d in self.differences
        ]
        if self.legacy_failures:
            lines.append(
                f"the legacy function fails {self.legacy_failures} of them (their sign-ups "
                "would fail; profileguard creates them)"
            )
        return lines


def unfilled_columns(settings: Settings, profile: TableFacts, plan: Plan) -> list[str]:
    """NOT NULL columns without a default that the mapping does not fill."""
    return [
        c.name
        for c in profile.columns.values()
        if c.not_null
        and not c.has_default
        and not c.generated
        and c.name != settings.profile.key
        and c.name not in plan.mapping
    ]


def check(
    conn: psycopg.Connection,
    settings: Settings,
    plan: Plan,
    legacy: LegacyMapping | None = None,
) -> Preflight:
    """Run both checks in the current transaction (temporary tables, dropped at its end);
    with `legacy`, the rehearsal also runs the legacy function's INSERT for the same users and
    compares the two column by column."""
    result = Preflight()
    for name in unfilled_columns(settings, plan.profile, plan):
        result.refusals.append(
            f"{settings.profile}.{name} is NOT NULL without a default and the mapping does not "
            f'fill it: every profile insert would fail. Map it (mapping.{name} = ["…"] in '
            f"profileguard.toml) or give it a default (alter table {settings.profile} alter "
            f"column {name} set default …)"
        )
    for constraint in plan.guards.deferrable:
        if constraint.on_key:
            # ON CONFLICT cannot use a deferrable constraint as its arbiter: every insert fails.
            result.refusals.append(
                f"{constraint.name} on {settings.profile}({settings.profile.key}) is DEFERRABLE: "
                "ON CONFLICT cannot use it to find an existing profile, so every profile insert "
                f"would fail. Make it not deferrable (alter table {settings.profile} alter "
                f"constraint {constraint.name} not deferrable), then run profileguard install"
            )
    # What the profile table demands of a username, as the mapping read it (mapping/plan.py).
    username_rule = plan.username_constraints
    if username_rule is not None:
        result.warnings.extend(username_rule.ignored)
        for name, body in username_rule.checks:
            if "~" in body or "like" in body.lower() or "similar" in body.lower():
                result.warnings.append(
                    f"check constraint {name} on {settings.profile}.{username_rule.column} "
                    "restricts characters: names are tried as given, reduced to [a-z0-9_], then "
                    "'user_' + a hash; when none passes, the username is NULL"
                    + (
                        " — the column is NOT NULL, so that sign-up's profile fails (recorded)"
                        if username_rule.not_null
                        else ""
                    )
                )
    try:
        with conn.transaction():
            _rehearse(conn, settings, plan, result, legacy)
    except psycopg.Error as exc:
        # No temporary tables allowed, or the copies cannot be made: the catalog checks stand.
        result.warnings.append(
            f"rehearsal skipped: {exc.diag.message_primary or exc} (SQLSTATE {exc.sqlstate})"
        )
    return result


def _copy_tables(conn: psycopg.Connection, settings: Settings) -> tuple[Settings, Plan] | None:
    identity = sql.Identifier(settings.identity.schema, settings.identity.name)
    profile = sql.Identifier(settings.profile.schema, settings.profile.name)
    conn.execute(
        sql.SQL("drop table if exists pg_temp.{}, pg_temp.{}").format(
            sql.Identifier(USERS_COPY), sql.Identifier(PROFILES_COPY)
        )
    )
    conn.execute(
        sql.SQL("create temporary table {} (like {} including defaults) on commit drop").format(
            sql.Identifier(USERS_COPY), identity
        )
    )
    conn.execute(
        sql.SQL("create temporary table {} (like {} including all) on commit drop").format(
            sql.Identifier(PROFILES_COPY), profile
        )
    )
    conn.execute(
        sql.SQL("insert into pg_temp.{} select * from {} limit {}").format(
            sql.Identifier(USERS_COPY), identity, sql.Literal(SAMPLE_USERS)
        )
    )
    copies = replace(
        settings,
        identity=TableRef("pg_temp", USERS_COPY, settings.identity.key),
        profile=TableRef("pg_temp", PROFILES_COPY, settings.profile.key),
    )
    return copies, build_plan(conn, copies)


def _synthetic(conn: psycopg.Connection, users: TableFacts, key: str) -> list[tuple[Any, str]]:
    """Insert the synthetic sign-ups into the users copy; (key, shape name) of each."""
    key_type = users.columns[key].type
    if key_type == "uuid":
        keys: list[Any] = [f"00000000-0000-4000-8000-{i:012d}" for i in range(len(SHAPES))]
    elif key_type in ("integer", "bigint", "smallint"):
        keys = [-(i + 1) for i in range(len(SHAPES))]
    elif users.columns[key].is_text:
        keys = [f"preflight-{i}" for i in range(len(SHAPES))]
    else:
        return []
    added = []
    for value, (name, provider, email, meta) in zip(keys, SHAPES, strict=True):
        row: dict[str, Any] = {key: value}
        if "email" in users.columns and users.columns["email"].is_text:
            row["email"] = email
        if "raw_user_meta_data" in users.columns and users.columns["raw_user_meta_data"].is_json:
            row["raw_user_meta_data"] = None if meta is None else json.dumps(meta)
        if "raw_app_meta_data" in users.columns and users.columns["raw_app_meta_data"].is_json:
            row["raw_app_meta_data"] = json.dumps({"provider": provider} if provider else {})
        if "is_anonymous" in users.columns:
            row["is_anonymous"] = provider == "anonymous"
        conn.execute(
            sql.SQL("insert into pg_temp.{} ({}) values ({})").format(
                sql.Identifier(USERS_COPY),
                sql.SQL(", ").join(map(sql.Identifier, row)),
                sql.SQL(", ").join(sql.Literal(v) for v in row.values()),
            )
        )
        added.append((value, name))
    return added


def _rehearse(
    conn: psycopg.Connection,
    settings: Settings,
    plan: Plan,
    result: Preflight,
    legacy: LegacyMapping | None = None,
) -> None:
    copied = _copy_tables(conn, settings)
    if copied is None:
        return
    copies, copy_plan = copied
    users = inspect_table(conn, copies.identity)
    if users is None:
        return
    key = settings.identity.key
    sample = [
        (r[0], f"user {r[0]}")
        for r in conn.execute(
            sql.SQL("select {} from pg_temp.{}").format(
                sql.Identifier(key), sql.Identifier(USERS_COPY)
            )
        ).fetchall()
    ]
    rows = sample + _synthetic(conn, users, key)
    source = sql.SQL("pg_temp.{}").format(sql.Identifier(USERS_COPY))
    for value, subject in rows:
        where = sql.SQL("where u.{} = {}").format(sql.Identifier(key), sql.Literal(value))
        result.rehearsed += 1
        try:
            with conn.transaction():
                conn.execute(insert_statement(copy_plan, source=source, where=where))
        except psycopg.Error as exc:
            message = (
                (exc.diag.message_primary or str(exc))
                .replace(PROFILES_COPY, settings.profile.name)
                .replace(USERS_COPY, settings.identity.name)
            )
            result.failures.append(
                {"subject": subject, "sqlstate": exc.sqlstate, "message": message}
            )
    if legacy is not None and legacy.key_expression is not None:
        compare(conn, settings, plan, legacy, [value for value, _ in rows], result)
    if result.failures and len(result.failures) == len(rows):
        result.refusals.append(
            f"no rehearsed profile could be created ({len(rows)} tried): the mapping does not "
            f"fit {settings.profile}"
        )


def compare(
    conn: psycopg.Connection,
    settings: Settings,
    plan: Plan,
    legacy: LegacyMapping,
    keys: list[Any],
    result: Preflight,
) -> None:
    """The legacy function's INSERT (its expressions over `new`, as it wrote them) for each
    rehearsed user into a third copy of the profile table, each in a savepoint rolled back at
    once (no subtransaction outlives its row); then, per column, how many of the profiles
    profileguard made differ from the legacy ones."""
    profile = sql.Identifier(settings.profile.schema, settings.profile.name)
    conn.execute(
        sql.SQL("create temporary table {} (like {} including all) on commit drop").format(
            sql.Identifier(LEGACY_COPY), profile
        )
    )
    key = settings.profile.key
    columns = [c for c in dict.fromkeys([*legacy.expressions, *plan.mapping]) if c != key]
    columns = [c for c in columns if c in plan.profile.columns]
    result.legacy = legacy.trigger
    insert = sql.SQL(
        "insert into pg_temp.{copy} ({key}, {columns}) select {key_expr}, {exprs}"
        " from pg_temp.{users} as new where new.{identity_key} = %(key)s returning to_jsonb({copy})"
    ).format(
        copy=sql.Identifier(LEGACY_COPY),
        key=sql.Identifier(key),
        columns=sql.SQL(", ").join(map(sql.Identifier, legacy.expressions)),
        key_expr=sql.SQL(str(legacy.key_expression)),
        exprs=sql.SQL(", ").join(sql.SQL(e) for e in legacy.expressions.values()),
        users=sql.Identifier(USERS_COPY),
        identity_key=sql.Identifier(settings.identity.key),
    )
    made = sql.SQL("select to_jsonb(p) from pg_temp.{} p where p.{} = %(key)s").format(
        sql.Identifier(PROFILES_COPY), sql.Identifier(key)
    )
    differ = dict.fromkeys(columns, 0)
    compared = 0
    for value in keys:
        row = None
        try:
            with conn.transaction() as savepoint:
                row = conn.execute(insert, {"key": value}).fetchone()
                raise psycopg.Rollback(savepoint)
        except psycopg.Error:
            result.legacy_failures += 1
            continue
        ours = conn.execute(made, {"key": value}).fetchone()
        if row is None or ours is None:
            continue
        compared += 1
        for column in columns:
            if row[0].get(column) != ours[0].get(column):
                differ[column] += 1
    result.differences = [{"column": c, "differ": differ[c], "compared": compared} for c in columns]

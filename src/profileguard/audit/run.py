"""Run every check in one read-only transaction, most severe findings first."""

from __future__ import annotations

import psycopg

from profileguard import sql as sqlfiles
from profileguard.audit.profiles import check_mapping, check_missing_profiles
from profileguard.audit.report import (
    AUDIT_SQL,
    SEVERITIES,
    AuditCheck,
    AuditReport,
    Context,
    Finding,
)
from profileguard.audit.security import check_profile_privileges, check_security
from profileguard.audit.state import check_state
from profileguard.audit.tables import (
    check_deferred_constraints,
    check_foreign_keys,
    check_tables,
)
from profileguard.audit.triggers import check_competing_triggers, check_legacy_mapping
from profileguard.catalog import inspect_table
from profileguard.config import Settings
from profileguard.db import connect, translate
from profileguard.installation import Installation, schema_version

CHECKS: tuple[AuditCheck, ...] = (
    check_tables,
    check_state,
    check_competing_triggers,
    check_legacy_mapping,
    check_missing_profiles,
    check_mapping,
    check_foreign_keys,
    check_deferred_constraints,
    check_security,
    check_profile_privileges,
)


def audit_connection(conn: psycopg.Connection, settings: Settings) -> AuditReport:
    """Run every check on `conn` (inside the caller's read-only transaction)."""
    conn.execute("set local search_path = ''")
    installed = Installation.read(conn)
    version = installed.version if installed else schema_version(conn)
    if installed is not None:  # the installed tables win over the configuration
        settings = settings.with_overrides(identity=installed.identity, profile=installed.profile)
    row = conn.execute(sqlfiles.query("client_roles", AUDIT_SQL)).fetchone()
    roles: list[str] = list(row[0]) if row else ["public"]
    ctx = Context(
        conn,
        settings,
        identity=inspect_table(conn, settings.identity),
        profile=inspect_table(conn, settings.profile),
        version=version,
        installed=installed,
        roles=roles,
    )
    ctx.state.update(
        installed=installed is not None,
        schema_version=version,
        latest_schema_version=sqlfiles.latest_version(),
        enabled=None if installed is None else installed.enabled,
        strict=None if installed is None else installed.strict,
        identity_table=str(settings.identity),
        profile_table=str(settings.profile),
    )
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(ctx))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return AuditReport(findings, ctx.state)


def run_audit(settings: Settings) -> AuditReport:
    """Audit the configured database in one read-only transaction that is rolled back."""
    conn = connect(settings)
    try:
        conn.execute("set transaction read only")
        return audit_connection(conn, settings)
    except psycopg.Error as exc:
        raise translate(exc, context="audit") from exc
    finally:
        conn.rollback()
        conn.close()

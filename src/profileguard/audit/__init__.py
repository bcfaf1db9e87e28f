"""`profileguard audit`: what is wrong with a database, before or after installing profileguard.

Read-only: one transaction, `set transaction read only`, rolled back. Each check (an AuditCheck)
is a small function returning Findings; each Finding carries its evidence and the exact SQL or
profileguard command that fixes it (several steps are separate lines). The checks are grouped by
subject: tables.py, state.py, triggers.py, profiles.py, security.py (which follows the spirit of
Supabase's linter, splinter, for what concerns user profiles); run.py runs them all.
"""

from profileguard.audit.report import SEVERITIES, AuditCheck, AuditReport, Context, Finding
from profileguard.audit.run import CHECKS, audit_connection, run_audit

__all__ = [
    "CHECKS",
    "SEVERITIES",
    "AuditCheck",
    "AuditReport",
    "Context",
    "Finding",
    "audit_connection",
    "run_audit",
]

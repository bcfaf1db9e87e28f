"""Turn the configured mapping into SQL: how one profile row is derived from one identity row
(plan.py: what feeds what; insert.py: the profile INSERT and the username rule; sync.py: updates,
redaction, drift; constants.py: the constants the statements fold in; confusables.py: the Unicode
data reserved names are compared with; columns.py: the columns of both tables all of it depends
on).

The same INSERT … SELECT serves every path (trigger, ensure, repair, the client's fallback), so the
profile a user gets does not depend on which path created it. Identifiers are composed with
`psycopg.sql`; JSON keys are literals; column types come from the catalog.
"""

from profileguard.mapping.columns import ColumnsUsed, columns_used
from profileguard.mapping.constants import INVISIBLE_CATEGORIES, constant_bodies
from profileguard.mapping.insert import (
    insert_statement,
    lean_statement,
    reserved_confusable_test,
    username_base_query,
)
from profileguard.mapping.plan import Plan, build_plan, source_expr
from profileguard.mapping.sync import (
    build_sync,
    drift_select,
    redact_statement,
    sync_statement,
    when_changed,
)

__all__ = [
    "INVISIBLE_CATEGORIES",
    "ColumnsUsed",
    "Plan",
    "build_plan",
    "build_sync",
    "columns_used",
    "constant_bodies",
    "drift_select",
    "insert_statement",
    "lean_statement",
    "redact_statement",
    "reserved_confusable_test",
    "source_expr",
    "sync_statement",
    "username_base_query",
    "when_changed",
]

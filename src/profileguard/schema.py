"""Moved to the `profileguard.install` package; kept only for the import of CLAIM_SEED in
repair/reconciler.py.

Remove once repair/reconciler.py imports CLAIM_SEED from profileguard.install.
"""

from profileguard.install.templates import CLAIM_SEED

__all__ = ["CLAIM_SEED"]

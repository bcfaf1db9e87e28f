"""Moved to the `profileguard.install` package; kept only for the worker's import of CLAIM_SEED.

Remove once reconcile.py imports CLAIM_SEED from profileguard.install.
"""

from profileguard.install.templates import CLAIM_SEED

__all__ = ["CLAIM_SEED"]

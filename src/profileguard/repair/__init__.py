"""The worker (the worker): level-triggered repair of users that have no profile.

A pass scans the identity table in keyset batches for users without a profile and hands them to
the one repair engine, `profileguard.repair(ids, 'worker')` (SQL), which creates the missing
profiles set-based, isolates failing users by splitting (a bounded number of subtransactions per
call) and tells a user's own failure (charged: backoff, then quarantine) from a fault that fails
everyone (held behind a breaker on its fingerprint: not charged, never quarantined). Several
workers (threads, processes, hosts) can run at once: every candidate is claimed with
`pg_try_advisory_xact_lock`, and candidates another worker holds are skipped.

Every cycle the worker also looks at the profile table's catalog (`check_catalog()`: a change
releases backed-off and quarantined users and probes breakers at once) and probes the open
breakers that are due (`probe_breakers()`: one canary each; success releases everyone waiting).
Quarantined users are tried again hourly. `run_forever` adds LISTEN on 'profileguard' for a fast
path, periodic incremental and full sweeps, a heartbeat, and reconnection with backoff (≤ 1 s for
connection faults). Nothing outlives a transaction but the LISTEN and a session lock_timeout, so
behind a transaction-mode pooler (`pooler = "transaction"`, or a pooler seen while the setting is
not set: see `db.keeps_session`) the worker runs the same with polling only.

A Worker holds one connection and is not thread-safe: give each thread or process its own.
"""

from profileguard.repair.outcome import BatchOutcome, PassResult
from profileguard.repair.worker import Worker

__all__ = ["BatchOutcome", "PassResult", "Worker"]

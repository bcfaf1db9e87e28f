"""The backfill: create the missing profiles of existing users, fast, safely and resumably.

The identity table is read in physical order: each batch is a range of heap pages (a TID range
scan) done server-side by `profileguard.backfill_pages(first, last, run)`, one INSERT … SELECT …
ON CONFLICT DO NOTHING with the installed mapping, in its own short transaction with
`lock_timeout` and `statement_timeout`. No list of ids ever reaches Python, so memory stays flat.

Guarantee: when a run completes, every user that existed when it started and still exists has a
profile (or is recorded as failed). A page scan alone could miss users whose row moved while it
ran (an UPDATE can put the new version on a page already done), so the scan is followed by a
catch-up over the pages again that takes only the rows written since the run began (xmin not
older than the oldest transaction running at its start; the others cannot have moved). If the
table was rewritten meanwhile (VACUUM FULL, CLUSTER: its file node changed), the catch-up takes
every row. A dry run does no catch-up.

A batch that fails with an error of the data or the schema hands its users to the repair engine
(`profileguard.repair`), which isolates and charges users' own failures (exit code 12 at the
end) and tells a fault that fails everyone apart: that stops the run (exit code 11), nobody
charged, the checkpoint kept for --resume.

Modules: `registry` (the runs table, the claim, the checkpoint), `lease` (the heartbeat that
holds a run, and who is gone), `scan` (page batches
and the catch-up), `sizing` (adaptive batch size, throttle), `handoff` (failed batches to the
engine), `faults` (what stops a run, named with its fix), `connections` (per-thread connections,
timeouts, retries), `run` (one run from start to end state), `model` (options, progress,
report, errors).
"""

from __future__ import annotations

from profileguard.backfill.model import (
    BackfillBusyError,
    BackfillStoppedError,
    Options,
    Progress,
    Report,
)
from profileguard.backfill.run import Backfill, run_backfill

__all__ = [
    "Backfill",
    "BackfillBusyError",
    "BackfillStoppedError",
    "Options",
    "Progress",
    "Report",
    "run_backfill",
]

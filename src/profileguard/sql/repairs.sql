-- Per-user repair state shared by the reconciler and the backfill. %(x)s are bound parameters.

-- name: forget
delete from profileguard.repair_state where user_id = any(%(ids)s::text[])

-- name: record_failure
select attempts, newly_quarantined
from profileguard.note_repair_failure(%(uid)s, %(state)s, %(message)s, %(source)s, %(max)s,
                                      %(base)s, %(cap)s, %(detail)s)

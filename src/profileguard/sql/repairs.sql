-- Per-user repair state shared by the reconciler and the backfill. %(x)s are bound parameters.

-- name: forget
delete from profileguard.repair_state where user_id = any(%(ids)s::text[])

-- name: record_failure
-- One more failed attempt for a user: capped full-jitter backoff, quarantined once attempts
-- reach %(max)s. The last column is true only when this call quarantined the user (quarantined_at
-- is set to now(), the transaction's start, only by the call that sets it).
insert into profileguard.repair_state as r (user_id, attempts, next_attempt_at,
    last_sqlstate, last_message, quarantined_at, history, updated_at)
values (%(uid)s, 1,
    now() + make_interval(secs => random() * least(%(cap)s, %(base)s)),
    %(state)s::text, %(message)s::text, case when 1 >= %(max)s then now() end,
    jsonb_build_array(jsonb_build_object('at', now(), 'sqlstate', %(state)s::text,
        'message', %(message)s::text, 'source', %(source)s::text)),
    now())
on conflict (user_id) do update set
    attempts = r.attempts + 1,
    next_attempt_at = now() + make_interval(secs => random()
        * least(%(cap)s, %(base)s * power(2, least(r.attempts, 60)))),
    last_sqlstate = excluded.last_sqlstate,
    last_message = excluded.last_message,
    quarantined_at = coalesce(r.quarantined_at,
        case when r.attempts + 1 >= %(max)s then now() end),
    history = (case when jsonb_array_length(r.history) >= %(limit)s
        then r.history - 0 else r.history end) || excluded.history,
    updated_at = now()
returning attempts, quarantined_at is not null and quarantined_at = now() as newly_quarantined

-- name: quarantine_event
insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
values ('quarantine', %(source)s, %(uid)s, %(state)s,
    profileguard.sqlstate_category(%(state)s), %(message)s, %(detail)s)

-- Functions that do not depend on the mapping; re-created by every install and upgrade.

-- Count one failed repair attempt of a user: full-jitter exponential backoff before the next
-- attempt, quarantine (and a 'quarantine' event) once `p_max_attempts` is reached; the second
-- column is true only for the call that quarantined. Shared by the worker, the backfill and the
-- in-database sweep, so all three back off and quarantine alike. Messages are stored without
-- row values (profileguard.redact_error; last_message by a trigger on repair_state).
create or replace function profileguard.note_repair_failure(
    p_user_id text,
    p_sqlstate text,
    p_message text,
    p_source text,
    p_max_attempts integer,
    p_backoff_base double precision,
    p_backoff_cap double precision,
    p_detail jsonb default '{}'::jsonb
)
returns table (attempts integer, newly_quarantined boolean)
language plpgsql
security definer
set search_path = ''
as $pg$
#variable_conflict use_column
declare
    v_attempts integer;
    v_newly boolean;
    v_entry jsonb := jsonb_build_array(jsonb_build_object(
        'at', now(), 'source', p_source, 'sqlstate', p_sqlstate,
        'message', profileguard.redact_error(left(p_message, 2000))));
begin
    insert into profileguard.repair_state as r (user_id, attempts, next_attempt_at, last_sqlstate,
        last_message, quarantined_at, history, updated_at)
    values (p_user_id, 1,
            now() + make_interval(secs => random() * least(p_backoff_cap, p_backoff_base)),
            p_sqlstate, left(p_message, 2000),
            case when 1 >= p_max_attempts then now() end, v_entry, now())
    on conflict (user_id) do update set
        attempts = r.attempts + 1,
        next_attempt_at = now() + make_interval(secs => random()
            * least(p_backoff_cap, p_backoff_base * power(2, least(r.attempts, 60)))),
        last_sqlstate = excluded.last_sqlstate,
        last_message = excluded.last_message,
        quarantined_at = coalesce(r.quarantined_at,
            case when r.attempts + 1 >= p_max_attempts then now() end),
        -- the history keeps the latest 50 attempts
        history = (case when jsonb_array_length(r.history) >= 50 then r.history - 0
                   else r.history end) || excluded.history,
        updated_at = now()
    -- quarantined_at is now() (the transaction's start) only for the call that set it
    returning r.attempts, r.quarantined_at is not null and r.quarantined_at = now()
        into v_attempts, v_newly;
    if v_newly then
        insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
        values ('quarantine', p_source, p_user_id, p_sqlstate,
                profileguard.sqlstate_category(p_sqlstate), left(p_message, 2000),
                jsonb_build_object('attempts', v_attempts) || coalesce(p_detail, '{}'::jsonb));
    end if;
    attempts := v_attempts;
    newly_quarantined := v_newly;
    return next;
end
$pg$;

-- True when a cancel (57014, whose message is `p_message`) came from the caller's statement_timeout:
-- the one case in which the signup trigger records a cancel as a failure rather than obeying it
-- (pg_cancel_backend raises the same SQLSTATE). PostgreSQL's message says which; where messages
-- are translated (lc_messages), the time since the statement began decides (the timer can start
-- before statement_timestamp() under the extended protocol, so this errs towards cancelling).
create or replace function profileguard.statement_timed_out(p_message text)
returns boolean
language sql
volatile
set search_path = ''
as $pg$
    select p_message = 'canceling statement due to statement timeout'
        or (p_message <> 'canceling statement due to user request'
            and pg_catalog.current_setting('statement_timeout')::interval > interval '0'
            and pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()
                >= pg_catalog.current_setting('statement_timeout')::interval)
$pg$;

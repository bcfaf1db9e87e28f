-- Functions generated from the configured mapping; rendered with psycopg.sql at install time.
-- The insert_* placeholders are INSERT … SELECT … ON CONFLICT (key) DO NOTHING statements built by mapping.py;
-- identity, profile and the keys are quoted identifiers.

-- The trigger: one set-based INSERT per statement on the identity table, optimistic (no ON
-- CONFLICT and no comparing of names within the statement: signups are new users, one at a time);
-- a unique violation is retried with both. One exception block per statement
-- (never per row); on error, one failure row per affected user, a notification, and the signup
-- commits — unless strict mode is on.
-- jit is off: every statement here is cheap, and a plan that passes jit_above_cost (the settings
-- read with enable_seqscan off does) would otherwise compile on every signup, ~10 ms each.
-- enable_seqscan is off: indexes are always the right way here (the settings row by its key, a
-- taken name on the retry), and a plan made while the profile table looked empty would scan it
-- once per new row, quadratic in its size. The retry also gets more work_mem (a bulk insert's
-- names compared in memory), set for it alone: each setting in the SET list costs every signup.
-- lock_timeout bounds every lock wait inside (per wait, not per signup): a profile or events table
-- locked by a migration turns into a recorded transient failure (55P03), and the signup commits.
-- A cancel is caught only when the caller's statement_timeout has really elapsed; after that the
-- statement runs on without a timeout (PostgreSQL does not re-arm it). A user's or operator's
-- cancel (pg_cancel_backend) still cancels. In strict mode every error propagates.
create or replace function profileguard.on_identity_insert()
returns trigger
language plpgsql
security definer
set search_path = ''
set jit = off
set enable_seqscan = off
set lock_timeout = {lock_timeout}
as $pg$
declare
    v_enabled boolean;
    v_strict boolean := false;
    v_work_mem text;
    v_state text;
    v_message text;
    v_detail text;
    v_count bigint;
begin
    begin
        select s.enabled, s.strict into v_enabled, v_strict
        from profileguard.settings s where s.singleton;
        if not coalesce(v_enabled, false) then
            return null;
        end if;
        {insert_new};
        return null;
    exception when others or query_canceled or assert_failure then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                                v_detail = pg_exception_detail;
        if v_state = '57014' and not profileguard.statement_timed_out(v_message) then
            raise;
        end if;
    end;
    -- The failure path: everything in it is protected too, so that not even recording the
    -- failure (the events table locked, say) can fail the signup. Its lock waits are shorter
    -- (the SET clause above restores lock_timeout when the function returns).
    -- A unique violation is tried once more with ON CONFLICT (a profile made first by another
    -- trigger or the app) and, for derived usernames, the long suffix.
    begin
        perform pg_catalog.set_config('lock_timeout', {record_lock_timeout}, true);
        if v_state = '23505' then
            begin
                -- Local to the transaction: put back below, or undone with this block on error.
                v_work_mem := pg_catalog.current_setting('work_mem');
                perform pg_catalog.set_config('work_mem', '64MB', true);
                {insert_new_forced};
                perform pg_catalog.set_config('work_mem', v_work_mem, true);
                return null;
            exception when others or query_canceled or assert_failure then
                get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                                        v_detail = pg_exception_detail;
                if v_state = '57014' and not profileguard.statement_timed_out(v_message) then
                    raise;
                end if;
            end;
        end if;
        if coalesce(v_strict, false) then
            raise exception using errcode = v_state, message = v_message,
                detail = coalesce(v_detail, ''),
                hint = 'profileguard strict mode is on; "profileguard install" without --strict lets signups commit and records the failure';
        end if;
        insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
        select 'failure', 'trigger', n.{identity_key}::text, v_state,
               profileguard.sqlstate_category(v_state), left(v_message, 2000),
               case when v_detail is null or v_detail = '' then null
                    else jsonb_build_object('detail', left(v_detail, 2000)) end
        from pg_new_users n;
        get diagnostics v_count = row_count;
        perform pg_notify('profileguard',
            json_build_object('event', 'failure', 'source', 'trigger', 'count', v_count,
                              'sqlstate', v_state)::text);
    exception when others or query_canceled or assert_failure then
        if coalesce(v_strict, false)
           or (sqlstate = '57014' and not profileguard.statement_timed_out(sqlerrm)) then
            raise;
        end if;
        -- Not recorded: a notification without users tells workers to sweep for them.
        begin
            perform pg_notify('profileguard', json_build_object(
                'event', 'failure', 'source', 'trigger', 'recorded', false,
                'sqlstate', coalesce(v_state, sqlstate))::text);
        exception when others then
            null;
        end;
    end;
    return null;
end
$pg$;

-- Create the profiles of the given users that do not have one; returns how many were created.
-- Each creation is recorded as a repair by `p_source`. Index lookups only and no JIT, as in the
-- trigger.
create or replace function profileguard.create_profiles(p_ids {key_type}[], p_source text)
returns integer
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
set jit = off
as $pg$
#variable_conflict use_column
declare
    v_count integer;
begin
    begin
        with created as ({insert_ids} returning {profile_key})
        insert into profileguard.events (kind, source, user_id)
        select 'repair', p_source, c.{profile_key}::text from created c;
    exception when unique_violation then
        if not {guard} then
            raise;
        end if;
        with created as ({insert_ids_forced} returning {profile_key})
        insert into profileguard.events (kind, source, user_id)
        select 'repair', p_source, c.{profile_key}::text from created c;
    end;
    get diagnostics v_count = row_count;
    return v_count;
end
$pg$;

-- Idempotent, one round trip: the profile of `p_user_id`, created if missing (by key lookups).
create or replace function profileguard.ensure_profile(p_user_id {key_type}, p_source text default 'ensure')
returns table (profile_id {key_type}, created boolean, profile jsonb)
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
set jit = off
as $pg$
#variable_conflict use_column
declare
    v_created boolean := false;
    v_profile jsonb;
begin
    if p_user_id is null then
        raise exception using errcode = '22004', message = 'profileguard: user id must not be null';
    end if;
    select to_jsonb(p) into v_profile from {profile} p where p.{profile_key} = p_user_id;
    if v_profile is null then
        if not exists (select from {identity} u where u.{identity_key} = p_user_id) then
            raise exception using errcode = 'P0002',
                message = format('profileguard: no user with %s = %s in %s',
                                 {identity_key_text}, p_user_id, {identity_text}),
                hint = 'profiles are created only for existing users; check the id';
        end if;
        v_created := profileguard.create_profiles(array[p_user_id], p_source) > 0;
        select to_jsonb(p) into v_profile from {profile} p where p.{profile_key} = p_user_id;
    end if;
    profile_id := p_user_id;
    created := v_created;
    profile := v_profile;
    return next;
end
$pg$;

-- Create the profiles of `p_ids`; when that fails, split the ids in halves until each failing
-- user is isolated and noted (backoff, then quarantine). One subtransaction per attempt, never
-- one per row on the success path. Returns how many profiles were created.
create or replace function profileguard.repair_ids(
    p_ids {key_type}[],
    p_source text,
    p_max_attempts integer default 5,
    p_backoff_base double precision default 60,
    p_backoff_cap double precision default 3600
)
returns integer
language plpgsql
security definer
set search_path = ''
as $pg$
declare
    v_state text;
    v_message text;
    v_half integer;
begin
    if coalesce(cardinality(p_ids), 0) = 0 then
        return 0;
    end if;
    begin
        return profileguard.create_profiles(p_ids, p_source);
    exception when others then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
    end;
    if cardinality(p_ids) = 1 then
        perform profileguard.note_repair_failure(p_ids[1]::text, v_state, v_message, p_source,
                                                 p_max_attempts, p_backoff_base, p_backoff_cap);
        return 0;
    end if;
    v_half := cardinality(p_ids) / 2;
    return profileguard.repair_ids(p_ids[1:v_half], p_source, p_max_attempts, p_backoff_base,
                                   p_backoff_cap)
         + profileguard.repair_ids(p_ids[v_half + 1:], p_source, p_max_attempts, p_backoff_base,
                                   p_backoff_cap);
end
$pg$;

-- A bounded sweep for databases where no worker process can run (scheduled with pg_cron by
-- `profileguard install --schedule pg_cron`): up to `p_max_rows` users without a profile, not
-- backed off, quarantined or claimed by a worker, repaired in one call. One sweep at a time.
create or replace function profileguard.reconcile(
    p_max_rows integer default 10000,
    p_max_attempts integer default 5
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $pg$
declare
    v_ids {key_type}[];
    v_created integer := 0;
begin
    if p_max_rows is null or p_max_rows < 1 then
        raise exception using errcode = '22023',
            message = 'profileguard: p_max_rows must be at least 1';
    end if;
    if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('profileguard.reconcile')) then
        return jsonb_build_object('skipped', 'another sweep is running');
    end if;
    select array_agg(c.id) into v_ids
    from (
        select u.{identity_key} as id
        from {identity} u
        where not exists (select from {profile} p where p.{profile_key} = u.{identity_key})
          and not exists (select from profileguard.repair_state r
                          where r.user_id = u.{identity_key}::text
                            and (r.quarantined_at is not null or r.next_attempt_at > now()))
        order by u.{identity_key}
        limit p_max_rows
    ) c
    where pg_catalog.pg_try_advisory_xact_lock(
        pg_catalog.hashtextextended(c.id::text, {claim_seed}));
    v_created := profileguard.repair_ids(v_ids, 'cron', p_max_attempts);
    if v_created > 0 then
        delete from profileguard.repair_state r
        where r.user_id = any(array(select x::text from unnest(v_ids) x))
          and exists (select from {profile} p where p.{profile_key} = r.user_id::{key_type});
    end if;
    return jsonb_build_object('scanned', coalesce(cardinality(v_ids), 0), 'repaired', v_created);
end
$pg$;

-- The backfill's unit of work: create the missing profiles of the users whose key is in
-- [p_first, p_last], with one INSERT … SELECT … WHERE NOT EXISTS … ON CONFLICT DO NOTHING.
-- With a run id it also adds the count to that run and records one 'backfill' event (not one per
-- user). One exception block per call (never per row): a unique violation on a derived username
-- retries the range once with the long suffix; any other error propagates so the caller can
-- split the range. Returns how many profiles were created.
-- enable_seqscan is off inside: a range is always best read by the keys' indexes, and a plan made
-- while the profile table looked empty (fresh install, just truncated) would otherwise look up
-- taken usernames with a sequential scan per row, quadratic in the rows already inserted.
-- jit is off: compiling the statement again for every batch costs more than it saves.
create or replace function profileguard.backfill_range(
    p_first {key_type}, p_last {key_type}, p_run_id bigint default null
)
returns bigint
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
set jit = off
as $pg$
declare
    v_count bigint;
begin
    begin
        {insert_range};
        get diagnostics v_count = row_count;
    exception when unique_violation then
        if not {guard} then
            raise;
        end if;
        {insert_range_forced};
        get diagnostics v_count = row_count;
    end;
    if p_run_id is not null then
        update profileguard.backfill_runs r
            set created = r.created + v_count, updated_at = clock_timestamp()
            where r.id = p_run_id;
        if v_count > 0 then
            insert into profileguard.events (kind, source, message, detail)
            values ('backfill', 'backfill', format('backfill created %s profiles', v_count),
                    jsonb_build_object('run_id', p_run_id, 'first', p_first::text,
                                       'last', p_last::text, 'created', v_count));
        end if;
    end if;
    return v_count;
end
$pg$;

-- The backfill's unit of work in physical order: the users on heap pages [p_first, p_last) (a
-- TID range scan, reading the table in order) without a profile get one, with one INSERT …
-- SELECT … ON CONFLICT DO NOTHING (the sweep leaves users with a profile to the conflict check;
-- the catch-up skips them with NOT EXISTS, as nearly all of its rows have one). With p_since
-- (the catch-up after a sweep) only rows written by transactions not older than p_since are
-- taken (age() compares them without wraparound trouble); with p_all_rows the catch-up takes
-- every row of the range.
-- Returns an array: users on those pages (0 in a catch-up), profiles created. Like
-- backfill_range it adds the count to the run and records one 'backfill' event.
-- random_page_cost is that of cached pages (a batch probes indexes the previous batches just
-- read): otherwise the planner hashes every taken username of the growing profile table once per
-- batch instead of probing the index once per new row, and batches slow down as it grows. For
-- the same reason the catch-up's NOT EXISTS probes the profile key per candidate row (hash and
-- merge joins off) instead of reading every profile once per batch.
create or replace function profileguard.backfill_pages(
    p_first bigint, p_last bigint, p_run_id bigint default null, p_since xid default null,
    p_all_rows boolean default false
)
returns bigint[]
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
set random_page_cost = 1.1
set jit = off
as $pg$
declare
    v_from pg_catalog.tid := pg_catalog.format('(%s,0)', p_first)::pg_catalog.tid;
    v_to pg_catalog.tid := pg_catalog.format('(%s,0)', p_last)::pg_catalog.tid;
    v_catchup boolean := p_since is not null or p_all_rows;
    v_since pg_catalog.int4 := case when p_all_rows then 2147483647
                                    else pg_catalog.age(p_since) end;
    v_scanned bigint := 0;
    v_count bigint;
begin
    if not v_catchup then
        select count(*) into v_scanned from {identity} u where u.ctid >= v_from and u.ctid < v_to;
    end if;
    begin
        if v_catchup then
            {insert_pages_since};
        else
            {insert_pages};
        end if;
        get diagnostics v_count = row_count;
    exception when unique_violation then
        if not {guard} then
            raise;
        end if;
        if v_catchup then
            {insert_pages_since_forced};
        else
            {insert_pages_forced};
        end if;
        get diagnostics v_count = row_count;
    end;
    if p_run_id is not null then
        update profileguard.backfill_runs r
            set created = r.created + v_count, updated_at = clock_timestamp()
            where r.id = p_run_id;
        if v_count > 0 then
            insert into profileguard.events (kind, source, message, detail)
            values ('backfill', 'backfill', format('backfill created %s profiles', v_count),
                    jsonb_build_object('run_id', p_run_id, 'first_page', p_first,
                                       'last_page', p_last, 'catchup', v_catchup,
                                       'created', v_count));
        end if;
    end if;
    return array[v_scanned, v_count];
end
$pg$;

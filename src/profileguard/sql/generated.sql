-- Functions generated from the configured mapping; rendered with psycopg.sql at install time.
-- The insert_* placeholders are the INSERT … SELECT statements mapping/insert.py builds (formatted
-- by pglast's prettifier); identity, profile and the keys are quoted identifiers.

-- The mapping's constants (mapping/constants.py): immutable and without arguments, each call is folded
-- into the plans as its value, so a row pays nothing for it; replacing one re-plans them.
create or replace function profileguard.reserved_names()
returns pg_catalog.text[]
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select {reserved_names}
$pg$;

create or replace function profileguard.unverified_providers()
returns pg_catalog.text[]
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select {unverified_providers}
$pg$;

-- Characters a username never keeps: controls, format characters, line and paragraph separators.
create or replace function profileguard.invisible_characters()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select {invisible_characters}
$pg$;

-- Space separators at either end of a name.
create or replace function profileguard.edge_spaces()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select {edge_spaces}
$pg$;

-- Names left to the rare path: a JSON array or object printed as text, or nothing cleaning keeps.
create or replace function profileguard.rare_names()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select {rare_names}
$pg$;

-- Combining marks: removed from a decomposed name before it is compared with the reserved names.
create or replace function profileguard.combining_marks()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select {combining_marks}
$pg$;

-- Unicode TR39 confusables of the reserved names' characters: translate() replaces each character
-- of confusable_characters() by the one at its place in confusable_prototypes().
create or replace function profileguard.confusable_characters()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select {confusable_characters}
$pg$;

create or replace function profileguard.confusable_prototypes()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select {confusable_prototypes}
$pg$;

-- The username rule's rare paths. The statements call them only behind a cheap test (a name
-- that is not plain ASCII), so that a common sign-up sets up one call of each and runs neither.
-- Whether `p_name` is confusable with a reserved name: not plain ASCII, and its skeleton
-- (lowercased, NFKD, combining marks removed, confusable characters replaced) is a reserved
-- name's ('admin' with a Cyrillic a, U+0430).
create or replace function profileguard.reserved_confusable(p_name pg_catalog.text)
returns boolean
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    {reserved_confusable}
$pg$;

-- The username base of the user `p_key` when the name chosen first is one of rare_names(): each
-- source in turn, an array or an object passed over as no name, the first one not empty after
-- cleaning (NULL when none is).
create or replace function profileguard.username_base(p_key {key_type})
returns pg_catalog.text
language sql
stable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    {username_base}
$pg$;

-- The profiles of the users `p_ids` that have none, by the mapping's full statement; returns their
-- keys. The repair engine, ensure_profile and the backfill come here. `p_forced`: a retry after a
-- unique violation (suffixed names looked up too). Index lookups only, no JIT (docs/internals.md).
create or replace function profileguard.insert_profiles(p_ids {key_type}[], p_forced boolean default false)
returns setof {key_type}
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
set random_page_cost = 1.1
set jit = off
as $pg$
#variable_conflict use_column
begin
    return query
    {insert_profiles};
end
$pg$;

-- The sign-up trigger: one set-based INSERT per statement on the identity table, in one exception
-- block: on error one failure row per new user and a notification, and the sign-up commits (unless
-- strict mode is on). A unique violation is retried once, the rows that collide given suffixed names.
-- Why each setting and step is there: docs/internals.md, "The sign-up trigger".
create or replace function profileguard.on_identity_insert()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
set enable_seqscan = off
set lock_timeout = {lock_timeout}
as $pg$
declare
    v_strict boolean := false;
    v_retry boolean := false;
    v_work_mem text;
    v_state text;
    v_message text;
    v_detail text;
    v_schema text;
    v_table text;
    v_column text;
    v_constraint text;
    v_datatype text;
    v_count bigint;
begin
    -- The first try, and once more after a unique violation: the rows whose key or name is taken
    -- are left out by ON CONFLICT and only those get the collision path (suffixed names, looked up).
    loop
        begin
            if not v_retry then
                -- The settings row's flags, folded into this plan as constants (profileguard.write_flags).
                if not profileguard.trigger_enabled() then
                    return null;
                end if;
                {insert_new};
            else
                -- The failure path's shorter lock waits (the SET clause above restores lock_timeout
                -- when the function returns) and more work_mem, put back below; both local to the
                -- transaction, and undone with this block on error.
                perform pg_catalog.set_config('lock_timeout', {record_lock_timeout}, true);
                v_work_mem := pg_catalog.current_setting('work_mem');
                perform pg_catalog.set_config('work_mem', '64MB', true);
                {insert_new_forced};
            end if;{insert_rule}{check_deferred_nested}
            if v_retry then
                perform pg_catalog.set_config('work_mem', v_work_mem, true);
            end if;
            return null;
        exception when others or query_canceled or assert_failure then
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                                    v_detail = pg_exception_detail, v_schema = schema_name,
                                    v_table = table_name, v_column = column_name,
                                    v_constraint = constraint_name, v_datatype = pg_datatype_name;
            if v_state = '57014' and not profileguard.statement_timed_out(v_message) then
                raise;
            end if;
        end;
        exit when v_retry or v_state <> '23505';
        v_retry := true;
    end loop;
    -- The failure path: everything in it is protected too, so that not even recording the
    -- failure (the events table locked, say) can fail the signup. Its lock waits are shorter.
    begin
        v_strict := profileguard.strict_mode();  -- read here: only a failure needs it
        perform pg_catalog.set_config('lock_timeout', {record_lock_timeout}, true);
        if coalesce(v_strict, false) then
            raise exception using errcode = v_state, message = v_message,
                detail = coalesce(v_detail, ''),
                hint = 'profileguard strict mode is on; "profileguard install" without --strict '
                       'lets signups commit and records the failure';
        end if;
        insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
        select 'failure', 'trigger', n.{identity_key}::text, v_state,
               profileguard.sqlstate_category(v_state), left(v_message, 2000),
               profileguard.error_fields(v_schema, v_table, v_column, v_constraint, v_datatype,
                                         v_detail)
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

-- Create the profiles of `p_ids` that are missing, each recorded as a repair by `p_source`; returns
-- how many. Deferrable constraints are checked before it returns (a violation raised where repair() catches it).
create or replace function profileguard.create_profiles(p_ids {key_type}[], p_source text)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $pg$
declare
    v_keys {key_type}[];
begin
    begin
        v_keys := array(select c.k from profileguard.insert_profiles(p_ids) c(k));{check_deferred}
    exception when unique_violation then
        if not {retry_forced} then
            raise;
        end if;
        v_keys := array(select c.k from profileguard.insert_profiles(p_ids, true) c(k));{check_deferred}
    end;
    insert into profileguard.events (kind, source, user_id)
    select 'repair', p_source, k::text from unnest(v_keys) k;
    return cardinality(v_keys);
end
$pg$;

-- Idempotent, one round trip: the profile of `p_user_id`, created if missing (by key lookups).
create or replace function profileguard.ensure_profile(p_user_id {key_type}, p_source text default 'ensure')
returns table (profile_id {key_type}, created boolean, profile jsonb)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $pg$
begin
    if p_user_id is null then
        raise exception using errcode = '22004', message = 'profileguard: user id must not be null';
    end if;
    profile_id := p_user_id;
    created := false;
    select to_jsonb(p) into profile from {profile} p where p.{profile_key} = p_user_id;
    if profile is null then
        if not exists (select from {identity} u where u.{identity_key} = p_user_id) then
            raise exception using errcode = 'P0002',
                message = format('profileguard: no user with %s = %s in %s',
                                 {identity_key_text}, p_user_id, {identity_text}),
                hint = 'profiles are created only for existing users; check the id';
        end if;
        created := profileguard.create_profiles(array[p_user_id], p_source) > 0;
        select to_jsonb(p) into profile from {profile} p where p.{profile_key} = p_user_id;
    end if;
    return next;
end
$pg$;

-- The one repair engine (worker, backfill, sweep, `retry`): creates the profiles of `p_ids` in one
-- statement, splitting failing ranges in halves within `p_budget` subtransactions; a failure is held
-- behind a breaker when everyone's, else charged to its user (docs/internals.md, "The repair engine").
create or replace function profileguard.repair(
    p_ids {key_type}[],
    p_source text,
    p_max_attempts integer default 5,
    p_backoff_base double precision default 1,
    p_backoff_cap double precision default 300,
    p_budget integer default 48,
    p_quarantine_retry double precision default 3600
)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
set lock_timeout = '500ms'
as $pg$
declare
    v_ids {key_type}[] := array(select distinct x from unnest(p_ids) x where x is not null);
    v_lo integer[] := array[1];
    v_hi integer[] := array[cardinality(v_ids)];
    v_a integer;
    v_b integer;
    v_budget integer := greatest(coalesce(p_budget, 48), 1);
    v_created integer := 0;
    v_deferred integer := 0;
    v_waiting integer := 0;
    v_failed integer := 0;
    v_quarantined integer := 0;
    v_state text;
    v_message text;
    v_schema text;
    v_table text;
    v_column text;
    v_constraint text;
    v_datatype text;
    v_detail text;
    v_fields jsonb;
    v_object text;
    v_fp text;
    v_everyone boolean;
    v_verdict jsonb := '{{}}'::jsonb;
    v_systemic jsonb := '{{}}'::jsonb;
begin
    while cardinality(v_ids) > 0 and cardinality(v_lo) > 0 loop
        v_a := v_lo[cardinality(v_lo)];
        v_b := v_hi[cardinality(v_hi)];
        v_lo := v_lo[1:cardinality(v_lo) - 1];
        v_hi := v_hi[1:cardinality(v_hi) - 1];
        if v_budget <= 0 then
            v_deferred := v_deferred + v_b - v_a + 1;
            continue;
        end if;
        v_budget := v_budget - 1;
        begin
            v_created := v_created + profileguard.create_profiles(v_ids[v_a:v_b], p_source);
            delete from profileguard.repair_state r where r.user_id = any(v_ids[v_a:v_b]::text[]);
            continue;
        exception when others or assert_failure then
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                v_schema = schema_name, v_table = table_name, v_column = column_name,
                v_constraint = constraint_name, v_datatype = pg_datatype_name, v_detail = pg_exception_detail;
        end;
        v_fields := profileguard.error_fields(v_schema, v_table, v_column, v_constraint, v_datatype, v_detail);
        select f.object, f.fingerprint into v_object, v_fp
        from profileguard.fingerprint(v_state, v_message, v_schema, v_table, v_column, v_constraint) f;
        -- Whose fault, by evidence (once per fingerprint and call): the database's by nature, the
        -- data's when others pass, else the neutral row's verdict (even beside an open breaker).
        v_everyone := (v_verdict ->> v_fp)::boolean;
        if v_everyone is null then
            if profileguard.systemic_by_nature(v_state) then
                v_everyone := true;
            elsif v_created > 0 or exists (select from profileguard.breakers b
                                           where b.fingerprint = v_fp and b.state = 'user_specific'
                                             and b.expires_at > now()) then
                v_everyone := false;
            elsif v_budget > 0 then
                v_budget := v_budget - 1;
                v_everyone := profileguard.neutral_probe(v_ids[v_a]::text) is not null;
            elsif exists (select from profileguard.breakers b where b.fingerprint = v_fp and b.state = 'open') then
                v_everyone := true;  -- no probe left in the budget: its last verdict
            end if;
            v_verdict := v_verdict || jsonb_build_object(v_fp, v_everyone);
            if not v_everyone then
                perform profileguard.mark_user_specific(v_fp, v_state, v_object, v_message, p_source,
                                                        'other users succeed: failures are users'' own');
            end if;
        end if;
        if v_everyone is null then
            v_deferred := v_deferred + v_b - v_a + 1;
        elsif v_everyone then
            perform profileguard.open_breaker(v_ids[v_a:v_b]::text[], v_fp, v_state, v_object, v_message, p_source);
            v_waiting := v_waiting + v_b - v_a + 1;
            v_systemic := v_systemic || jsonb_build_object(v_fp, jsonb_build_object('fingerprint', v_fp,
                'sqlstate', v_state, 'object', v_object,
                'message', profileguard.redact_error(left(v_message, 2000), v_fields)));
        elsif v_a = v_b then
            v_failed := v_failed + 1;
            v_quarantined := v_quarantined + (
                select n.newly_quarantined::integer
                from profileguard.note_repair_failure(v_ids[v_a]::text, v_state, v_message, p_source,
                    p_max_attempts, p_backoff_base, p_backoff_cap,
                    jsonb_build_object('object', v_object) || coalesce(v_fields, '{{}}'), v_fp, p_quarantine_retry) n);
        else
            v_lo := v_lo || ((v_a + v_b) / 2 + 1) || v_a;
            v_hi := v_hi || v_b || (v_a + v_b) / 2;
        end if;
    end loop;
    return jsonb_build_object('created', v_created, 'failed', v_failed, 'quarantined', v_quarantined,
        'waiting', v_waiting, 'deferred', v_deferred,
        'subtransactions', greatest(coalesce(p_budget, 48), 1) - v_budget,
        'systemic', coalesce((select jsonb_agg(e.value) from jsonb_each(v_systemic) e), '[]'));
end
$pg$;

-- Probe each open breaker that is due with a canary drawn at random among its users: a success or
-- another fault releases them; the same fault closes it too if the neutral row passes (their data),
-- else the next probe waits twice as long (at most 1 s for locks, cancels and connections, else 5 s).
create or replace function profileguard.probe_breakers(p_source text default 'worker')
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
set lock_timeout = '200ms'
as $pg$
declare
    v_breaker record;
    v_canary text;
    v_state text;
    v_message text;
    v_schema text;
    v_table text;
    v_column text;
    v_constraint text;
    v_fp text;
    v_wait double precision;
    v_probed integer := 0;
    v_closed integer := 0;
    v_released integer := 0;
begin
    delete from profileguard.breakers b where b.state = 'user_specific' and b.expires_at <= now();
    for v_breaker in
        select b.* from profileguard.breakers b
        where b.state = 'open' and b.next_probe_at <= now()
        order by b.next_probe_at
        for update skip locked
    loop
        select r.user_id into v_canary from profileguard.repair_state r
            where r.waiting_on = v_breaker.fingerprint order by random() limit 1;
        if v_canary is null then
            delete from profileguard.breakers b where b.fingerprint = v_breaker.fingerprint;
            v_closed := v_closed + 1;
            continue;
        end if;
        v_probed := v_probed + 1;
        v_fp := null;
        begin
            perform profileguard.create_profiles(array[v_canary::{key_type}], p_source);
            delete from profileguard.repair_state r where r.user_id = v_canary;
        exception when others or assert_failure then
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                v_schema = schema_name, v_table = table_name, v_column = column_name,
                v_constraint = constraint_name;
            v_fp := (profileguard.fingerprint(v_state, v_message, v_schema, v_table, v_column,
                                              v_constraint)).fingerprint;
        end;
        if v_fp is distinct from v_breaker.fingerprint then
            v_released := v_released + profileguard.close_breaker(v_breaker.fingerprint, p_source,
                coalesce('the fault changed to ' || v_fp, 'a probe succeeded'));
        elsif not profileguard.systemic_by_nature(v_breaker.sqlstate)
              and profileguard.neutral_probe(v_canary) is null then
            v_released := v_released + profileguard.mark_user_specific(v_breaker.fingerprint,
                v_breaker.sqlstate, v_breaker.object, v_breaker.message, p_source,
                'the neutral row is accepted: failures are users'' own data');
        else
            update profileguard.repair_state r set updated_at = now() where r.user_id = v_canary;
            v_wait := least(v_breaker.probe_interval * 2,
                            case when left(v_breaker.sqlstate, 2) in ('08', '40', '53', '55', '57') then 1 else 5 end);
            update profileguard.breakers b
                set probes = b.probes + 1, probe_interval = v_wait,
                    next_probe_at = now() + make_interval(secs => v_wait), updated_at = now()
                where b.fingerprint = v_breaker.fingerprint;
            continue;
        end if;
        v_closed := v_closed + 1;
    end loop;
    return jsonb_build_object('probed', v_probed, 'closed', v_closed, 'released', v_released);
end
$pg$;

-- A bounded sweep where no worker runs (pg_cron, `install --schedule pg_cron`): the catalog, the
-- breakers, then up to `p_max_rows` due users without a profile through the engine. One at a time.
create or replace function profileguard.sweep(
    p_max_rows integer default 10000,
    p_max_attempts integer default 5
)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_ids {key_type}[];
    v_result jsonb;
    v_created integer := 0;
    v_probe jsonb;
    v_offset integer := 0;
    v_budget integer := 48;
begin
    if p_max_rows is null or p_max_rows < 1 then
        raise exception using errcode = '22023', message = 'profileguard: p_max_rows must be at least 1';
    end if;
    if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('profileguard.reconcile')) then
        return jsonb_build_object('skipped', 'another sweep is running');
    end if;
    perform profileguard.check_catalog();
    v_probe := profileguard.probe_breakers('cron');
    -- not backed off, not held, not claimed by a worker
    v_ids := array(
        select c.id
        from (
            select u.{identity_key} as id
            from {identity} u
            where not exists (select from {profile} p where p.{profile_key} = u.{identity_key})
              and not exists (select from profileguard.repair_state r
                              where r.user_id = u.{identity_key}::text
                                and (r.waiting_on is not null or r.next_attempt_at > now()))
            order by u.{identity_key}
            limit p_max_rows
        ) c
        where pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended(c.id::text, {claim_seed})));
    -- chunks of 1000 share the one budget; what is deferred or left is the next sweep's
    while v_offset < cardinality(v_ids) and v_budget > 0 loop
        v_result := profileguard.repair(v_ids[v_offset + 1:v_offset + 1000], 'cron', p_max_attempts,
                                        p_budget => v_budget);
        v_created := v_created + (v_result ->> 'created')::integer;
        v_budget := v_budget - (v_result ->> 'subtransactions')::integer;
        v_offset := v_offset + 1000;
        exit when jsonb_array_length(v_result -> 'systemic') > 0;
    end loop;
    return jsonb_build_object('scanned', cardinality(v_ids), 'repaired', v_created)
        || case when (v_probe ->> 'probed')::integer + (v_probe ->> 'closed')::integer > 0
                then jsonb_build_object('breakers', v_probe) else '{{}}' end;
end
$pg$;

-- The sweep's former name: pg_cron jobs scheduled before schema version 16 call it.
create or replace function profileguard.reconcile(
    p_max_rows integer default 10000,
    p_max_attempts integer default 5
)
returns jsonb
language sql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
    select profileguard.sweep(p_max_rows, p_max_attempts)
$pg$;

-- Retired: the backfill works in physical order (backfill_pages).
drop function if exists profileguard.backfill_range({key_type}, {key_type}, bigint);

-- The backfill's batch: the users on heap pages [p_first, p_last) without a profile get one (with p_since
-- or p_all_rows, the catch-up's rows only). Returns [users on those pages, profiles created], counted to
-- run p_run_id. Why its settings: docs/internals.md, "Backfill runs".
create or replace function profileguard.backfill_pages(
    p_first bigint, p_last bigint, p_run_id bigint default null, p_since xid default null,
    p_all_rows boolean default false
)
returns bigint[]
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
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
    v_since pg_catalog.int4 := case when p_all_rows then 2147483647 else pg_catalog.age(p_since) end;
    v_scanned bigint := 0;
    v_count bigint;
    v_ids {key_type}[];
begin
    if v_catchup then
        v_ids := array({pages_since});
    else
        select count(*) into v_scanned from {identity} u where u.ctid >= v_from and u.ctid < v_to;
        v_ids := array({pages});
    end if;
    begin
        select count(*) into v_count from profileguard.insert_profiles(v_ids) c;{check_deferred}
    exception when unique_violation then
        if not {retry_forced} then
            raise;
        end if;
        select count(*) into v_count from profileguard.insert_profiles(v_ids, true) c;{check_deferred}
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

-- Profiles follow their users after creation: the UPDATE triggers' functions, the set-based sync
-- they and the worker share, and the drift finder (statements built by mapping/sync.py).

-- True when the row version with xmin `p_xid` was written by this transaction or one of its
-- subtransactions (the 32-bit xid widened around this transaction's own; see docs/internals.md).
create or replace function profileguard.written_in_this_transaction(p_xid xid)
returns boolean
language sql
volatile
set search_path = pg_catalog, pg_temp
as $pg$
    select case
        when p_xid::text::bigint < 3 then false
        else pg_catalog.pg_xact_status(
                 (t.top + ((p_xid::text::bigint - t.top + 2147483648) & 4294967295) - 2147483648)::text::xid8
             ) = 'in progress'
    end
    from (select pg_catalog.pg_current_xact_id()::text::bigint as top) t
$pg$;

-- Brings the profiles of `p_ids` (every user's when null) in step with their users and clears the
-- redacted columns of soft-deleted users, writing only profiles that differ; returns how many.
-- Outside the trigger each is recorded as a 'repair' by `p_source`.
create or replace function profileguard.sync_profiles(
    p_ids {key_type}[], p_source text, p_own_tx boolean default false
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $pg$
declare
    v_written {key_type}[];
begin
    if p_ids is null then
        perform pg_catalog.set_config('enable_seqscan', 'on', true);
        with synced as (
            {sync_all}
        ), redacted as (
            {redact_all}
        )
        select array(select * from synced union all select * from redacted) into v_written;
    else
        with synced as (
            {sync_ids}
        ), redacted as (
            {redact_ids}
        )
        select array(select * from synced union all select * from redacted) into v_written;
    end if;{check_deferred}
    -- Recorded by a statement of its own: the trigger's statements name no profileguard table,
    -- as a lock on one would stall the sync.
    if p_source <> 'trigger' then
        insert into profileguard.events (kind, source, user_id)
        select 'repair', p_source, k::text from unnest(v_written) k;
    end if;
    return cardinality(v_written);
end
$pg$;

-- The row trigger's function, never called: its WHEN clause queues the user and is false
-- (see docs/internals.md).
create or replace function profileguard.on_identity_update_row()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
begin
    return null;
end
$pg$;

-- The statement trigger: syncs the queued users in one pass. As in on_identity_insert, an error is
-- recorded (source 'sync') for the worker to repair and the update commits, unless strict mode is on.
create or replace function profileguard.on_identity_update()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
set enable_seqscan = off
set lock_timeout = {lock_timeout}
as $pg$
declare
    v_queue text := coalesce(pg_catalog.current_setting('profileguard.sync', true), '');
    v_ids {key_type}[];
    v_strict boolean := false;
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
    if v_queue = '' then
        return null;
    end if;
    perform pg_catalog.set_config('profileguard.sync', '', true);
    begin
        if v_queue <> '*' then
            v_ids := ('{{' || pg_catalog.ltrim(v_queue, ',') || '}}')::text[]::{key_type}[];
        end if;
        if not profileguard.trigger_enabled() then
            return null;
        end if;
        perform profileguard.sync_profiles(v_ids, 'trigger', true);
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
    -- The failure path, protected too (see on_identity_insert).
    begin
        v_strict := profileguard.strict_mode();  -- read here: only a failure needs it
        perform pg_catalog.set_config('lock_timeout', {record_lock_timeout}, true);
        if coalesce(v_strict, false) then
            raise exception using errcode = v_state, message = v_message,
                detail = coalesce(v_detail, ''),
                hint = 'profileguard strict mode is on; "profileguard install" without --strict '
                       'lets updates commit and records the failure';
        end if;
        -- One failure row per queued user; after an overflow one without a user: the worker
        -- then runs a full drift pass.
        insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
        select 'failure', 'sync', x::text, v_state,
               profileguard.sqlstate_category(v_state), left(v_message, 2000),
               profileguard.error_fields(v_schema, v_table, v_column, v_constraint, v_datatype,
                                         v_detail)
        from unnest(coalesce(v_ids::text[], array[null::text])) x;
        get diagnostics v_count = row_count;
        perform pg_notify('profileguard',
            json_build_object('event', 'failure', 'source', 'sync', 'count', v_count,
                              'sqlstate', v_state)::text);
    exception when others or query_canceled or assert_failure then
        if coalesce(v_strict, false)
           or (sqlstate = '57014' and not profileguard.statement_timed_out(sqlerrm)) then
            raise;
        end if;
        -- Not recorded: the notification, sent at commit whatever is locked, names the users when
        -- they fit, else tells workers to look for drift.
        begin
            perform pg_notify('profileguard', json_build_object(
                'event', 'failure', 'source', 'sync', 'recorded', false,
                'sqlstate', coalesce(v_state, sqlstate),
                'ids', case when pg_catalog.octet_length(v_ids::text) <= {notify_ids_bytes}
                            then pg_catalog.to_json(v_ids::text[]) end)::text);
        exception when others then
            null;
        end;
    end;
    return null;
end
$pg$;

-- Profiles that disagree with their users: those of `p_ids`, else of up to `p_scan` users after
-- `p_after` in key order (a step of a full pass). Returns JSON: scanned, last (the key reached) and
-- drift (user_id, columns; 'redact': a deleted user's profile still holds redacted values).
create or replace function profileguard.find_drift(
    p_ids {key_type}[] default null, p_after {key_type} default null, p_scan integer default 10000
)
returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
set jit = off
as $pg$
declare
    v_ids {key_type}[] := p_ids;
    v_last {key_type};
    v_drift jsonb;
begin
    if p_ids is null then
        v_ids := array(select u.{identity_key} from {identity} u
                       where p_after is null or u.{identity_key} > p_after
                       order by u.{identity_key} limit p_scan);
        v_last := v_ids[cardinality(v_ids)];
    end if;
    select coalesce(jsonb_agg(jsonb_build_object('user_id', d.pg_key, 'columns', d.pg_columns)
                              order by d.pg_key), '[]')
      into v_drift
      from (
          {drift}
      ) d
     where cardinality(d.pg_columns) > 0;
    return jsonb_build_object('scanned', cardinality(v_ids), 'last', v_last, 'drift', v_drift);
end
$pg$;

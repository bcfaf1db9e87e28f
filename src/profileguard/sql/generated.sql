-- Functions generated from the configured mapping; rendered with psycopg.sql at install time.
-- The insert_* placeholders are INSERT … SELECT … ON CONFLICT (key) DO NOTHING statements built by mapping.py;
-- identity, profile and the keys are quoted identifiers.

-- The trigger: one set-based INSERT per statement on the identity table. One exception block per
-- statement (never per row); on error, one failure row per affected user, a notification, and the
-- signup commits — unless strict mode is on.
create or replace function profileguard.on_identity_insert()
returns trigger
language plpgsql
security definer
set search_path = ''
as $pg$
declare
    v_state text;
    v_message text;
    v_detail text;
    v_count bigint;
begin
    if not coalesce((select s.enabled from profileguard.settings s), false) then
        return null;
    end if;
    begin
        {insert_new};
    exception when others then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                                v_detail = pg_exception_detail;
        if v_state = '23505' and {guard} then
            begin
                {insert_new_forced};
                return null;
            exception when others then
                get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                                        v_detail = pg_exception_detail;
            end;
        end if;
        if coalesce((select s.strict from profileguard.settings s), false) then
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
    end;
    return null;
end
$pg$;

-- Create the profiles of the given users that do not have one; returns how many were created.
-- Each creation is recorded as a repair by `p_source`.
create or replace function profileguard.create_profiles(p_ids {key_type}[], p_source text)
returns integer
language plpgsql
security definer
set search_path = ''
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

-- Idempotent, one round trip: the profile of `p_user_id`, created if missing.
create or replace function profileguard.ensure_profile(p_user_id {key_type}, p_source text default 'ensure')
returns table (profile_id {key_type}, created boolean, profile jsonb)
language plpgsql
security definer
set search_path = ''
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

create or replace trigger profileguard_after_insert
    after insert on {identity}
    referencing new table as pg_new_users
    for each statement
    execute function profileguard.on_identity_insert();

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

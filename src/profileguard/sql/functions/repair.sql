-- The repair engine's bookkeeping: attempts and backoff, fingerprints, breakers, the catalog's
-- version (docs/internals.md, "The repair engine"). The engine, profileguard.repair(), is generated.

-- Charge `p_user_id` one failed attempt: jittered exponential backoff, quarantine (and its event)
-- at `p_max_attempts`, retried every `p_quarantine_retry` seconds; true when this call quarantined.
create or replace function profileguard.note_repair_failure(
    p_user_id text,
    p_sqlstate text,
    p_message text,
    p_source text,
    p_max_attempts integer,
    p_backoff_base double precision,
    p_backoff_cap double precision,
    p_detail jsonb default '{}'::jsonb,
    p_fingerprint text default null,
    p_quarantine_retry double precision default 3600
)
returns table (attempts integer, newly_quarantined boolean)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
#variable_conflict use_column
begin
    insert into profileguard.repair_state (user_id) values (p_user_id) on conflict do nothing;
    update profileguard.repair_state r set
        attempts = r.attempts + 1,
        next_attempt_at = now() + make_interval(secs => case
            when r.quarantined_at is not null or r.attempts + 1 >= p_max_attempts then p_quarantine_retry
            else random() * least(p_backoff_cap, p_backoff_base * power(2, least(r.attempts, 60))) end),
        last_sqlstate = p_sqlstate,
        last_message = left(p_message, 2000),
        quarantined_at = coalesce(r.quarantined_at, case when r.attempts + 1 >= p_max_attempts then now() end),
        -- the latest 50 attempts
        history = (case when jsonb_array_length(r.history) >= 50 then r.history - 0 else r.history end)
            || jsonb_build_array(jsonb_build_object('at', now(), 'source', p_source, 'sqlstate', p_sqlstate,
                   'message', profileguard.redact_error(left(p_message, 2000), p_detail))),
        fingerprint = p_fingerprint,
        waiting_on = null,
        updated_at = now()
    where r.user_id = p_user_id
    -- quarantined_at is now() (the transaction's start) only for the call that set it
    returning r.attempts, r.quarantined_at is not distinct from now() into attempts, newly_quarantined;
    if newly_quarantined then
        insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
        values ('quarantine', p_source, p_user_id, p_sqlstate, profileguard.sqlstate_category(p_sqlstate),
                left(p_message, 2000),
                jsonb_build_object('attempts', attempts, 'fingerprint', p_fingerprint) || coalesce(p_detail, '{}'));
    end if;
    return next;
end
$pg$;

-- True when a cancel (57014) came from the caller's statement_timeout, not pg_cancel_backend: by
-- its message, or where messages are translated, by the time since the statement began.
create or replace function profileguard.statement_timed_out(p_message text)
returns boolean
language sql
volatile
set search_path = pg_catalog, pg_temp
as $pg$
    select p_message = 'canceling statement due to statement timeout'
        or (p_message <> 'canceling statement due to user request'
            and pg_catalog.current_setting('statement_timeout')::interval > interval '0'
            and pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()
                >= pg_catalog.current_setting('statement_timeout')::interval)
$pg$;

-- A failure's object (schema.table.column or .constraint, from its error's fields) and fingerprint:
-- its SQLSTATE and object, else its message without values, UUIDs, emails or words with a digit.
create or replace function profileguard.fingerprint(
    p_sqlstate text, p_message text, p_schema text, p_table text, p_column text, p_constraint text,
    out object text, out fingerprint text
)
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select o.object, coalesce(p_sqlstate, 'XXXXX') || ':' || coalesce(o.object, pg_catalog.left(
        pg_catalog.regexp_replace(pg_catalog.regexp_replace(pg_catalog.regexp_replace(
            profileguard.strip_values(coalesce(p_message, '')),
            '[[:xdigit:]]{8}-[[:xdigit:]]{4}-[[:xdigit:]]{4}-[[:xdigit:]]{4}-[[:xdigit:]]{12}', '#', 'g'),
            '[^[:space:]@]+@[^[:space:]@]+', '#', 'g'),
            '[[:alnum:]_-]*[0-9][[:alnum:]_-]*', '#', 'g'), 200))
    from (select nullif(pg_catalog.concat_ws('.', nullif(p_schema, ''), nullif(p_table, ''),
                                             coalesce(nullif(p_column, ''), nullif(p_constraint, ''))), '')
          as object) o
$pg$;

-- Failures about the database, never one user's data (locks, cancels, connections, resources, a
-- missing object or privilege): they hold users behind a breaker from the first occurrence.
create or replace function profileguard.systemic_by_nature(p_sqlstate text)
returns boolean
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select left(p_sqlstate, 2) in ('08', '25', '3D', '3F', '40', '53', '55', '57', '58')
        or p_sqlstate in ('42501', '42P01', '42703', '42883', '42704', '0A000')
$pg$;

-- The fingerprint of the failure of `p_user_id`'s neutral row (its key, defaults, a value without user
-- data for each mapped column), inserted and always rolled back; null when it is accepted.
create or replace function profileguard.neutral_probe(p_user_id text)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    t record;
    v_columns text;
    v_values text;
    v_state text;
    v_message text;
    v_schema text;
    v_table text;
    v_column text;
    v_constraint text;
begin
    begin
        t := profileguard._monitored_tables();
        select pg_catalog.string_agg(pg_catalog.format('%I', a.attname), ', ' order by a.attnum),
               pg_catalog.string_agg(pg_catalog.format('%L::%s', v.value,
                   pg_catalog.format_type(a.atttypid, a.atttypmod)), ', ' order by a.attnum)
          into v_columns, v_values
        from profileguard.settings s
        cross join pg_catalog.pg_attribute a
        join pg_catalog.pg_type ty on ty.oid = a.atttypid
        join pg_catalog.pg_type e on e.oid = case when ty.typtype = 'd' then ty.typbasetype else ty.oid end
        cross join lateral (
            select case
                when a.attname = t.profile_key then p_user_id
                when e.typtype = 'e' then
                    (select l.enumlabel::text from pg_catalog.pg_enum l
                     where l.enumtypid = e.oid order by l.enumsortorder limit 1)
                when e.oid = 'pg_catalog.uuid'::pg_catalog.regtype then pg_catalog.md5(p_user_id)::pg_catalog.uuid::text
                when e.oid in ('pg_catalog.json'::pg_catalog.regtype, 'pg_catalog.jsonb'::pg_catalog.regtype) then '{}'
                -- letters only, nothing for a format CHECK to refuse, cut to the column's length
                when e.typcategory = 'S' then
                    pg_catalog.left(pg_catalog.translate(pg_catalog.md5(p_user_id), '0123456789', 'ghijklmnop'),
                                    case when a.atttypmod > 4 then a.atttypmod - 4 else 16 end)
                when e.typcategory in ('N', 'T') then '0'
                when e.typcategory = 'B' then 'false'
                when e.typcategory = 'D' then 'now'
                when e.typcategory = 'A' then '{}'
            end as value
        ) v
        where s.singleton and a.attrelid = t.profile and a.attnum > 0 and not a.attisdropped
          and (a.attname = t.profile_key
               or (not a.atthasdef and a.attgenerated = '' and a.attidentity = ''
                   and (s.config -> 'mapping' ? a.attname::text or s.config ->> 'username_column' = a.attname::text)))
          and v.value is not null;
        execute pg_catalog.format('insert into %s (%s) values (%s) on conflict (%I) do nothing',
                                  t.profile, v_columns, v_values, t.profile_key);
        raise exception using errcode = 'PGN00', message = 'profileguard: neutral row accepted';
    exception when others or assert_failure then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
            v_schema = schema_name, v_table = table_name, v_column = column_name,
            v_constraint = constraint_name;
    end;
    if v_state = 'PGN00' then
        return null;
    end if;
    return (profileguard.fingerprint(v_state, v_message, v_schema, v_table, v_column, v_constraint)).fingerprint;
end
$pg$;

-- Open (or keep open) the breaker of a fingerprint and hold `p_ids` behind it, uncharged; users
-- charged with it before are refunded and held too. True when this call opened it.
create or replace function profileguard.open_breaker(
    p_ids text[], p_fingerprint text, p_sqlstate text, p_object text, p_message text,
    p_source text
)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_opened boolean;
    v_message text := profileguard.redact_error(left(p_message, 2000));
begin
    -- a user_specific verdict gives way; an open breaker stays as it is
    delete from profileguard.breakers b where b.fingerprint = p_fingerprint and b.state <> 'open';
    insert into profileguard.breakers as b (fingerprint, state, sqlstate, object, message, next_probe_at)
    values (p_fingerprint, 'open', p_sqlstate, p_object, v_message, now() + interval '0.25 seconds')
    on conflict (fingerprint) do update set
        sqlstate = excluded.sqlstate, object = excluded.object, message = excluded.message, updated_at = now()
    returning b.opened_at = now() into v_opened;
    update profileguard.repair_state r
        set waiting_on = p_fingerprint, attempts = 0, quarantined_at = null,
            next_attempt_at = 'infinity', updated_at = now()
        where r.fingerprint = p_fingerprint and r.waiting_on is null;
    insert into profileguard.repair_state as r (user_id, attempts, next_attempt_at, last_sqlstate,
        last_message, fingerprint, waiting_on, updated_at)
    select x, 0, 'infinity', p_sqlstate, left(p_message, 2000), p_fingerprint, p_fingerprint, now()
    from unnest(p_ids) x
    on conflict (user_id) do update set
        next_attempt_at = 'infinity', last_sqlstate = excluded.last_sqlstate,
        last_message = excluded.last_message, fingerprint = excluded.fingerprint,
        waiting_on = excluded.waiting_on, updated_at = now();
    if v_opened then
        insert into profileguard.events (kind, source, sqlstate, category, message, detail)
        values ('breaker', p_source, p_sqlstate, profileguard.sqlstate_category(p_sqlstate),
                format('every user fails: %s', v_message),
                jsonb_build_object('state', 'open', 'fingerprint', p_fingerprint, 'object', p_object));
    end if;
    return v_opened;
end
$pg$;

-- Close a breaker: every user it held is tried again at once. Returns how many it released.
create or replace function profileguard.close_breaker(p_fingerprint text, p_source text, p_why text)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_count integer;
begin
    update profileguard.repair_state r
        set waiting_on = null, next_attempt_at = now(), updated_at = now()
        where r.waiting_on = p_fingerprint;
    get diagnostics v_count = row_count;
    delete from profileguard.breakers b where b.fingerprint = p_fingerprint and b.state = 'open';
    if found then
        insert into profileguard.events (kind, source, message, detail)
        values ('breaker', p_source, format('%s; %s user(s) released', p_why, v_count),
                jsonb_build_object('state', 'closed', 'fingerprint', p_fingerprint, 'released', v_count));
    end if;
    return v_count;
end
$pg$;

-- A fingerprint that fails some users while others pass is their data: close its breaker, and
-- charge its failures to users for an hour (or until the catalog changes). Returns how many it released.
create or replace function profileguard.mark_user_specific(
    p_fingerprint text, p_sqlstate text, p_object text, p_message text, p_source text, p_why text
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_released integer := profileguard.close_breaker(p_fingerprint, p_source, p_why);
begin
    insert into profileguard.breakers as b (fingerprint, state, sqlstate, object, message, expires_at)
    values (p_fingerprint, 'user_specific', p_sqlstate, p_object,
            profileguard.redact_error(left(p_message, 2000)), now() + interval '1 hour')
    on conflict (fingerprint) do update set
        state = 'user_specific', expires_at = excluded.expires_at, updated_at = now();
    return v_released;
end
$pg$;

-- A fingerprint of the profile table's definition and of the source of every function it may call
-- (profileguard's, and all of the schemas involved): a change may fix or cause failures.
create or replace function profileguard.catalog_version()
returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $pg$
    with t as (
        select c.oid, c.relnamespace,
               pg_catalog.concat_ws(':', c.oid, c.relacl, c.relrowsecurity, c.relforcerowsecurity, c.relowner) as facts
        from profileguard.settings s
        left join pg_catalog.pg_class c on c.oid = pg_catalog.to_regclass(pg_catalog.format('%I.%I',
            pg_catalog.split_part(s.profile_table, '.', 1), pg_catalog.split_part(s.profile_table, '.', 2)))
        where s.singleton
    ),
    columns as (
        select a.atttypid, d.oid, pg_catalog.concat_ws(':', a.attnum, a.attname, a.atttypid, a.atttypmod,
                   a.attnotnull, a.attacl, pg_catalog.pg_get_expr(d.adbin, d.adrelid)) as facts
        from t join pg_catalog.pg_attribute a on a.attrelid = t.oid
        left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where a.attnum > 0 and not a.attisdropped
    ),
    -- the table's constraints and its columns' domains'
    constraints as (
        select c.oid,
               pg_catalog.concat_ws(':', c.conname, c.convalidated, pg_catalog.pg_get_constraintdef(c.oid)) as facts
        from pg_catalog.pg_constraint c, t
        where c.conrelid = t.oid or c.contypid in (select l.atttypid from columns l)
    ),
    triggers as (
        select g.oid, g.tgfoid, pg_catalog.concat_ws(':', g.tgname, g.tgenabled, g.tgfoid) as facts
        from pg_catalog.pg_trigger g, t where g.tgrelid = t.oid
    ),
    policies as (
        select o.oid, pg_catalog.concat_ws(':', o.polname, o.polcmd, o.polroles,
            pg_catalog.pg_get_expr(o.polqual, o.polrelid), pg_catalog.pg_get_expr(o.polwithcheck, o.polrelid)) as facts
        from pg_catalog.pg_policy o, t where o.polrelid = t.oid
    ),
    -- a helper called inside a PL/pgSQL body leaves no trace in pg_depend: its schema counts whole
    involved (oid) as (
        select t.relnamespace from t
        union
        select f.pronamespace
        from (select 'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid from constraints c
              union all select 'pg_catalog.pg_attrdef', l.oid from columns l
              union all select 'pg_catalog.pg_trigger', g.oid from triggers g
              union all select 'pg_catalog.pg_policy', o.oid from policies o) as x (classid, objid)
        join pg_catalog.pg_depend d on d.classid = x.classid and d.objid = x.objid
        join pg_catalog.pg_proc f on d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass and f.oid = d.refobjid
        except
        select n.oid from pg_catalog.pg_namespace n
        where n.nspname in ('pg_catalog', 'information_schema', 'profileguard')
    ),
    -- the flags trigger_enabled and strict_mode change with the settings row, not with the catalog;
    -- extensions' functions change with ALTER EXTENSION, seen through their objects
    functions as (
        select pg_catalog.concat_ws(':', p.oid, pg_catalog.md5(p.prosrc), p.proconfig,
            case when p.pronamespace = 'profileguard'::pg_catalog.regnamespace then p.proacl end) as facts
        from pg_catalog.pg_proc p
        where (p.pronamespace = 'profileguard'::pg_catalog.regnamespace
               and p.proname not in ('trigger_enabled', 'strict_mode'))
           or p.oid in (select g.tgfoid from triggers g)
           or (p.pronamespace in (select n.oid from involved n)
               and not exists (select from pg_catalog.pg_depend e
                               where e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                                 and e.objid = p.oid and e.deptype = 'e'))
    )
    select pg_catalog.md5(pg_catalog.string_agg(x.facts, '|' order by x.facts collate "C"))
    from (select t.facts from t
          union all select l.facts from columns l
          union all select c.facts from constraints c
          union all select pg_catalog.pg_get_indexdef(i.indexrelid) || i.indisvalid
                    from pg_catalog.pg_index i, t where i.indrelid = t.oid
          union all select g.facts from triggers g
          union all select o.facts from policies o
          union all select f.facts from functions f) x
$pg$;

-- On a change of catalog_version() since the last look, release everyone a change could help:
-- breakers probed, backed-off users tried at once, user_specific verdicts forgotten. True on a change.
create or replace function profileguard.check_catalog()
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_now text := profileguard.catalog_version();
    v_seen text;
begin
    -- several workers may call it: one of them sees each change
    select c.version into v_seen from profileguard.catalog_seen c where c.singleton for update skip locked;
    if not found or v_seen is not distinct from v_now then
        return false;
    end if;
    update profileguard.catalog_seen c set version = v_now, checked_at = now(), changed_at = now()
        where c.singleton;
    if v_seen is null then
        return false;
    end if;
    update profileguard.breakers b set next_probe_at = now(), probe_interval = 0.25, updated_at = now()
        where b.state = 'open';
    delete from profileguard.breakers b where b.state = 'user_specific';
    update profileguard.repair_state r set next_attempt_at = now(), updated_at = now()
        where r.waiting_on is null and r.next_attempt_at > now();
    return true;
end
$pg$;

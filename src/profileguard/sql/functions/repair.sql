-- The repair engine's bookkeeping: each user's attempts and backoff, failure fingerprints,
-- breakers, and the catalog fingerprint whose change releases whoever waits. (The engine itself,
-- profileguard.repair(), depends on the mapping: see generated.sql.)

-- Count one failed repair attempt of a user (its own data: see profileguard.repair): full-jitter
-- exponential backoff before the next attempt, quarantine (and a 'quarantine' event) once
-- `p_max_attempts` is reached; the second column is true only for the call that quarantined.
-- Quarantine is a label, not an end: a quarantined user is tried again every
-- `p_quarantine_retry` seconds (and at once when the profile table's catalog changes). Messages
-- are stored without values (profileguard.redact_error, with the names of the error's fields in
-- `p_detail`; last_message by a trigger on repair_state).
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
declare
    v_attempts integer;
    v_newly boolean;
    v_entry jsonb := jsonb_build_array(jsonb_build_object(
        'at', now(), 'source', p_source, 'sqlstate', p_sqlstate,
        'message', profileguard.redact_error(left(p_message, 2000), p_detail)));
begin
    insert into profileguard.repair_state as r (user_id, attempts, next_attempt_at, last_sqlstate,
        last_message, quarantined_at, history, updated_at, fingerprint, waiting_on)
    values (p_user_id, 1,
            now() + make_interval(secs => case when 1 >= p_max_attempts then p_quarantine_retry
                                               else random() * least(p_backoff_cap, p_backoff_base)
                                          end),
            p_sqlstate, left(p_message, 2000),
            case when 1 >= p_max_attempts then now() end, v_entry, now(), p_fingerprint, null)
    on conflict (user_id) do update set
        attempts = r.attempts + 1,
        next_attempt_at = now() + make_interval(secs => case
            when r.quarantined_at is not null or r.attempts + 1 >= p_max_attempts
                then p_quarantine_retry
            else random() * least(p_backoff_cap, p_backoff_base * power(2, least(r.attempts, 60)))
            end),
        last_sqlstate = excluded.last_sqlstate,
        last_message = excluded.last_message,
        quarantined_at = coalesce(r.quarantined_at,
            case when r.attempts + 1 >= p_max_attempts then now() end),
        -- the history keeps the latest 50 attempts
        history = (case when jsonb_array_length(r.history) >= 50 then r.history - 0
                   else r.history end) || excluded.history,
        fingerprint = excluded.fingerprint,
        waiting_on = null,
        updated_at = now()
    -- quarantined_at is now() (the transaction's start) only for the call that set it
    returning r.attempts, r.quarantined_at is not null and r.quarantined_at = now()
        into v_attempts, v_newly;
    if v_newly then
        insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
        values ('quarantine', p_source, p_user_id, p_sqlstate,
                profileguard.sqlstate_category(p_sqlstate), left(p_message, 2000),
                jsonb_build_object('attempts', v_attempts, 'fingerprint', p_fingerprint)
                    || coalesce(p_detail, '{}'::jsonb));
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
set search_path = pg_catalog, pg_temp
as $pg$
    select p_message = 'canceling statement due to statement timeout'
        or (p_message <> 'canceling statement due to user request'
            and pg_catalog.current_setting('statement_timeout')::interval > interval '0'
            and pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()
                >= pg_catalog.current_setting('statement_timeout')::interval)
$pg$;

-- A failure's fingerprint: its SQLSTATE and the object it names (schema.table.column or
-- schema.table.constraint from the error's fields), or, when it names none, its message with
-- every value stripped (profileguard.strip_values, no name kept) and every UUID, email and word
-- with a digit in it (numbers, most ids) replaced by #: a fault that names each user it fails
-- ('signup 42 rejected by gate') is one fingerprint. Users failing with the same fingerprint
-- fail for the same reason.
create or replace function profileguard.fingerprint(p_sqlstate text, p_object text, p_message text)
returns text
language plpgsql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_text text;
begin
    if nullif(p_object, '') is not null then
        return coalesce(p_sqlstate, 'XXXXX') || ':' || p_object;
    end if;
    v_text := profileguard.strip_values(coalesce(p_message, ''));
    v_text := pg_catalog.regexp_replace(v_text,
        '[[:xdigit:]]{8}-[[:xdigit:]]{4}-[[:xdigit:]]{4}-[[:xdigit:]]{4}-[[:xdigit:]]{12}', '#', 'g');
    v_text := pg_catalog.regexp_replace(v_text, '[^[:space:]@]+@[^[:space:]@]+', '#', 'g');
    v_text := pg_catalog.regexp_replace(v_text, '[[:alnum:]_-]*[0-9][[:alnum:]_-]*', '#', 'g');
    return coalesce(p_sqlstate, 'XXXXX') || ':' || pg_catalog.left(v_text, 200);
end
$pg$;

-- The object a failure names, from the fields of its error.
create or replace function profileguard.failure_object(
    p_schema text, p_table text, p_column text, p_constraint text
)
returns text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select nullif(pg_catalog.concat_ws('.', nullif(p_schema, ''), nullif(p_table, ''),
                                       coalesce(nullif(p_column, ''), nullif(p_constraint, ''))), '')
$pg$;

-- Failures that are about the database, never about one user's data: locks, cancels, connections,
-- resources, a read-only or shutting-down server, a missing schema, table, column or function, a
-- missing privilege. They hold users behind a breaker from the first occurrence.
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

-- Whether a fault is everyone's or a user's data, decided by the data: the neutral row of a user
-- is the profile they would get with no data of their own — their key, the table's defaults,
-- and for each mapped column without a default a value of its type that carries no user data
-- (text: the md5 of the key spelled in 16 lower-case letters, with no digit, space or sign for a
-- format CHECK to refuse, cut to the column's length; numbers 0; booleans false; uuid: the md5
-- of the key; dates and times: now; intervals 0; json and arrays: empty; enums: their first
-- label; other types: the default). A mapped column is never left NULL, which would pass every
-- CHECK. Unmapped columns get their defaults, as in the full row.
-- It is inserted inside a subtransaction and always rolled back (the table's own triggers fire
-- on it too, and are rolled back with it). Returns null when the row is accepted, else the
-- fingerprint of its failure: a fault the neutral row passes while the user's full row fails is
-- that user's data; one it fails too is everyone's.
create or replace function profileguard.neutral_probe(p_user_id text)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    t record;
    v_key_type text;
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
        select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_key_type
        from pg_catalog.pg_attribute a
        where a.attrelid = t.profile and a.attname = t.profile_key and not a.attisdropped;
        select pg_catalog.string_agg(pg_catalog.format('%I', a.attname), ', ' order by a.attnum),
               pg_catalog.string_agg(pg_catalog.format('%L::%s', v.value,
                                         pg_catalog.format_type(a.atttypid, a.atttypmod)), ', '
                                     order by a.attnum)
          into v_columns, v_values
        from profileguard.settings s
        cross join pg_catalog.pg_attribute a
        join pg_catalog.pg_type ty on ty.oid = a.atttypid
        join pg_catalog.pg_type e on e.oid = case when ty.typtype = 'd' then ty.typbasetype
                                                   else ty.oid end
        cross join lateral (
            select case
                when e.typtype = 'e' then
                    (select l.enumlabel::text from pg_catalog.pg_enum l
                     where l.enumtypid = e.oid order by l.enumsortorder limit 1)
                when e.oid = 'pg_catalog.uuid'::pg_catalog.regtype then
                    pg_catalog.md5(p_user_id)::pg_catalog.uuid::text
                when e.oid in ('pg_catalog.json'::pg_catalog.regtype,
                               'pg_catalog.jsonb'::pg_catalog.regtype) then '{}'
                when e.typcategory = 'S' then
                    pg_catalog.left(pg_catalog.translate(pg_catalog.md5(p_user_id), '0123456789',
                                                         'ghijklmnop'),
                                    case when a.atttypmod > 4 then a.atttypmod - 4 else 16 end)
                when e.typcategory = 'N' then '0'
                when e.typcategory = 'B' then 'false'
                when e.typcategory = 'D' then 'now'
                when e.typcategory = 'T' then '0'
                when e.typcategory = 'A' then '{}'
            end as value
        ) v
        where s.singleton and a.attrelid = t.profile and a.attnum > 0 and not a.attisdropped
          and a.attname <> t.profile_key and not a.atthasdef
          and a.attgenerated = '' and a.attidentity = ''
          and (s.config -> 'mapping' ? a.attname::text
               or s.config ->> 'username_column' = a.attname::text)
          and v.value is not null;
        execute pg_catalog.format('insert into %s (%I%s) values (%L::%s%s) on conflict (%I) do nothing',
            t.profile, t.profile_key, coalesce(', ' || v_columns, ''), p_user_id, v_key_type,
            coalesce(', ' || v_values, ''), t.profile_key);
        -- Accepted: rolled back all the same.
        raise exception using errcode = 'PGN00', message = 'profileguard: neutral row accepted';
    exception when others or assert_failure then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
            v_schema = schema_name, v_table = table_name, v_column = column_name,
            v_constraint = constraint_name;
    end;
    if v_state = 'PGN00' then
        return null;
    end if;
    return profileguard.fingerprint(v_state,
        profileguard.failure_object(v_schema, v_table, v_column, v_constraint), v_message);
end
$pg$;

-- The longest wait between probes of an open breaker: short for faults that pass by themselves
-- (a lock, a cancel, a connection), longer for the others (a change to the catalog, read every
-- cycle, probes those at once anyway).
create or replace function profileguard.probe_cap(p_sqlstate text)
returns double precision
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select case when left(p_sqlstate, 2) in ('08', '40', '53', '55', '57') then 1.0 else 5.0 end
$pg$;

-- Open (or keep open) the breaker of a fingerprint and hold `p_ids` behind it: their attempts are
-- not counted and they are never quarantined for it. Users charged earlier with the same
-- fingerprint (before it was seen to fail everyone) are refunded and held too. Returns true when
-- this call opened it.
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
    v_opened boolean := false;
    v_message text := profileguard.redact_error(left(p_message, 2000));
begin
    insert into profileguard.breakers as b (fingerprint, state, sqlstate, object, message,
                                            probe_interval, next_probe_at)
    values (p_fingerprint, 'open', p_sqlstate, p_object, v_message, 0.25,
            now() + interval '0.25 seconds')
    on conflict (fingerprint) do update set
        state = 'open', sqlstate = excluded.sqlstate, object = excluded.object,
        message = excluded.message, expires_at = null, updated_at = now(),
        opened_at = case when b.state = 'open' then b.opened_at else now() end,
        probes = case when b.state = 'open' then b.probes else 0 end,
        probe_interval = case when b.state = 'open' then b.probe_interval else 0.25 end,
        next_probe_at = case when b.state = 'open' then b.next_probe_at
                             else now() + interval '0.25 seconds' end
    returning (xmax = 0 or b.opened_at = now()) into v_opened;
    -- Charged before the fault was seen to fail everyone (among p_ids or not): refunded.
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
                jsonb_build_object('state', 'open', 'fingerprint', p_fingerprint,
                                   'object', p_object));
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
                jsonb_build_object('state', 'closed', 'fingerprint', p_fingerprint,
                                   'released', v_count));
    end if;
    return v_count;
end
$pg$;

-- A fingerprint seen to fail some users while others succeed is about those users' data: their
-- failures are charged to them (for `p_hours`), and any breaker on it closes.
create or replace function profileguard.mark_user_specific(
    p_fingerprint text, p_sqlstate text, p_object text, p_message text, p_hours double precision
)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
begin
    if exists (select from profileguard.breakers b
               where b.fingerprint = p_fingerprint and b.state = 'open') then
        perform profileguard.close_breaker(p_fingerprint, 'worker',
                                           'other users succeed: failures are users'' own');
    end if;
    insert into profileguard.breakers as b (fingerprint, state, sqlstate, object, message,
                                            expires_at)
    values (p_fingerprint, 'user_specific', p_sqlstate, p_object,
            profileguard.redact_error(left(p_message, 2000)),
            now() + make_interval(secs => p_hours * 3600))
    on conflict (fingerprint) do update set
        state = 'user_specific', expires_at = excluded.expires_at, updated_at = now();
end
$pg$;

-- A fingerprint of the profile table's definition and profileguard's own functions: columns,
-- defaults, constraints (the column types' domain constraints too), indexes, triggers and their
-- functions' source, policies, grants. A fix by `CREATE OR REPLACE FUNCTION` changes no row of
-- the table's catalog, hence the functions' source: of profileguard's functions, and of every
-- function in the schemas involved — the table's own, and those of the functions its
-- constraints, defaults, triggers and policies call (pg_depend). A helper called inside a
-- PL/pgSQL body leaves no trace in pg_depend, so those schemas are taken whole (functions of
-- extensions excepted: they change with ALTER EXTENSION, which is seen through their objects).
-- Cheap: catalog lookups by the table's oid and a few namespaces.
create or replace function profileguard.catalog_version()
returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $pg$
    with t as (
        select pg_catalog.to_regclass(pg_catalog.format('%I.%I',
                   pg_catalog.split_part(s.profile_table, '.', 1),
                   pg_catalog.split_part(s.profile_table, '.', 2))) as oid
        from profileguard.settings s where s.singleton
    ),
    -- What the table's constraints (its columns' domains' too), defaults, triggers and policies
    -- depend on.
    objects (classid, objid) as (
        select 'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid
        from pg_catalog.pg_constraint c, t
        where c.conrelid = t.oid
           or c.contypid in (select a.atttypid from pg_catalog.pg_attribute a
                             where a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped)
        union all
        select 'pg_catalog.pg_attrdef'::pg_catalog.regclass, d.oid
        from pg_catalog.pg_attrdef d, t where d.adrelid = t.oid
        union all
        select 'pg_catalog.pg_trigger'::pg_catalog.regclass, g.oid
        from pg_catalog.pg_trigger g, t where g.tgrelid = t.oid
        union all
        select 'pg_catalog.pg_policy'::pg_catalog.regclass, o.oid
        from pg_catalog.pg_policy o, t where o.polrelid = t.oid
    ),
    involved (oid) as (
        select c.relnamespace from pg_catalog.pg_class c, t where c.oid = t.oid
        union
        select f.pronamespace
        from objects o
        join pg_catalog.pg_depend d on d.classid = o.classid and d.objid = o.objid
        join pg_catalog.pg_proc f on d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                                 and f.oid = d.refobjid
        except
        select n.oid from pg_catalog.pg_namespace n
        where n.nspname in ('pg_catalog', 'information_schema', 'profileguard')
    )
    select pg_catalog.md5(pg_catalog.concat_ws('|',
        t.oid::text,
        (select pg_catalog.string_agg(pg_catalog.concat_ws(':', a.attname, a.atttypid, a.atttypmod,
                    a.attnotnull, a.attacl, pg_catalog.pg_get_expr(d.adbin, d.adrelid)), ','
                    order by a.attnum)
         from pg_catalog.pg_attribute a
         left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped),
        (select pg_catalog.string_agg(pg_catalog.concat_ws(':', c.conname, c.convalidated,
                    pg_catalog.pg_get_constraintdef(c.oid)), ',' order by c.conname, c.oid)
         from pg_catalog.pg_constraint c
         where c.conrelid = t.oid
            or c.contypid in (select a.atttypid from pg_catalog.pg_attribute a
                              where a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped)),
        (select pg_catalog.string_agg(pg_catalog.pg_get_indexdef(i.indexrelid) || i.indisvalid,
                    ',' order by i.indexrelid)
         from pg_catalog.pg_index i where i.indrelid = t.oid),
        (select pg_catalog.string_agg(pg_catalog.concat_ws(':', g.tgname, g.tgenabled, g.tgfoid,
                    pg_catalog.md5(p.prosrc), p.proconfig), ',' order by g.tgname)
         from pg_catalog.pg_trigger g join pg_catalog.pg_proc p on p.oid = g.tgfoid
         where g.tgrelid = t.oid),
        (select pg_catalog.string_agg(pg_catalog.concat_ws(':', o.polname, o.polcmd, o.polroles,
                    pg_catalog.pg_get_expr(o.polqual, o.polrelid),
                    pg_catalog.pg_get_expr(o.polwithcheck, o.polrelid)), ',' order by o.polname)
         from pg_catalog.pg_policy o where o.polrelid = t.oid),
        (select pg_catalog.concat_ws(':', c.relacl, c.relrowsecurity, c.relforcerowsecurity,
                    c.relowner)
         from pg_catalog.pg_class c where c.oid = t.oid),
        (select pg_catalog.string_agg(pg_catalog.concat_ws(':', p.oid, pg_catalog.md5(p.prosrc),
                    p.proconfig, p.proacl), ',' order by p.oid)
         from pg_catalog.pg_proc p
         where p.pronamespace = (select n.oid from pg_catalog.pg_namespace n
                                 where n.nspname = 'profileguard')
           -- the flags change with the settings row, not with the catalog
           and p.proname not in ('trigger_enabled', 'strict_mode')),
        (select pg_catalog.string_agg(pg_catalog.concat_ws(':', p.oid, pg_catalog.md5(p.prosrc),
                    p.proconfig), ',' order by p.oid)
         from pg_catalog.pg_proc p
         where p.pronamespace in (select n.oid from involved n)
           and not exists (select from pg_catalog.pg_depend e
                           where e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                             and e.objid = p.oid and e.deptype = 'e'))
    ))
    from t
$pg$;

-- Compare the catalog fingerprint with the one seen last; on a change, release everyone a change
-- could help: open breakers are probed at once, backed-off and quarantined users are tried at
-- once, and what was learnt about fingerprints being users' own is forgotten. Returns true on a
-- change. Several workers may call it: one of them sees each change.
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
    select c.version into v_seen from profileguard.catalog_seen c
        where c.singleton for update skip locked;
    if not found or v_seen is not distinct from v_now then
        return false;
    end if;
    update profileguard.catalog_seen c
        set version = v_now, checked_at = now(), changed_at = now() where c.singleton;
    if v_seen is null then
        return false;
    end if;
    update profileguard.breakers b set next_probe_at = now(), probe_interval = 0.25,
        updated_at = now() where b.state = 'open';
    delete from profileguard.breakers b where b.state = 'user_specific';
    update profileguard.repair_state r set next_attempt_at = now(), updated_at = now()
        where r.waiting_on is null and r.next_attempt_at > now();
    return true;
end
$pg$;

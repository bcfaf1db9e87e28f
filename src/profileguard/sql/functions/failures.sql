-- The audit trail's writers: failure categories, recording a client's failure, and the
-- redaction every stored message goes through (the triggers that apply it are in
-- schema/triggers.sql).

-- SQLSTATE → a category an operator can act on.
create or replace function profileguard.sqlstate_category(p_sqlstate text)
returns text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case
        when p_sqlstate is null then 'other'
        when p_sqlstate in ('40001', '40P01', '55P03', '53300', '57014')
            or left(p_sqlstate, 2) in ('08', '57') then 'transient'
        when p_sqlstate = '42501' or left(p_sqlstate, 2) = '28' then 'permission'
        when p_sqlstate in ('42P01', '42883', '42703', '3F000', '42704') then 'missing_object'
        when left(p_sqlstate, 2) = '23' then 'constraint'
        when left(p_sqlstate, 2) = '22' then 'data'
        else 'other'
    end
$$;

-- Record one failure per user; used by clients whose own ensure call failed.
create or replace function profileguard.record_failure(
    p_user_id text,
    p_sqlstate text,
    p_message text,
    p_source text default 'client'
)
returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    insert into profileguard.events (kind, source, user_id, sqlstate, category, message)
    values ('failure', p_source, p_user_id, p_sqlstate,
            profileguard.sqlstate_category(p_sqlstate), left(p_message, 2000));
$$;

-- An error text without the data PostgreSQL quotes in it: the values of "Failing row contains
-- (…)", of "Key (col)=(…)" and a trailing ': "…"' (invalid input syntax, enum values). Names
-- of constraints, columns and tables stay: they say what to fix. Applied on write, so the audit
-- trail never holds a user's name, email or metadata, however long it is kept.
create or replace function profileguard.redact_error(p_text text)
returns text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select pg_catalog.regexp_replace(
             pg_catalog.regexp_replace(
               pg_catalog.regexp_replace(p_text,
                 'Failing row contains \(.*\)', 'Failing row contains (redacted)'),
               '\)=\(.*\)( already exists| conflicts with existing key| is not present in table| is still referenced)',
               ')=(redacted)\1'),
             ': ".*"$', ': "(redacted)"')
$$;

-- Every event is redacted as it is written, whoever writes it (the trigger, the worker, clients
-- through record_failure).
create or replace function profileguard.redact_event()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
begin
    if new.kind in ('failure', 'quarantine') then
        new.message := profileguard.redact_error(new.message);
        if new.detail ? 'detail' then
            new.detail := pg_catalog.jsonb_set(new.detail, '{detail}',
                pg_catalog.to_jsonb(profileguard.redact_error(new.detail ->> 'detail')));
        end if;
    end if;
    return new;
end
$pg$;

create or replace function profileguard.redact_repair_state()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
begin
    new.last_message := profileguard.redact_error(new.last_message);
    return new;
end
$pg$;

-- profileguard schema, version 9: stored failure messages keep no row values.
-- Runs inside the install transaction. Nothing here is granted to anyone (see privileges.sql).

-- An error text without the data PostgreSQL quotes in it: the values of "Failing row contains
-- (…)", of "Key (col)=(…)" and a trailing ': "…"' (invalid input syntax, enum values). Names
-- of constraints, columns and tables stay: they say what to fix. Applied on write, so the audit
-- trail never holds a user's name, email or metadata, however long it is kept.
create or replace function profileguard.redact_error(p_text text)
returns text
language sql
immutable
parallel safe
set search_path = ''
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
set search_path = ''
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

create trigger redact_before_write
    before insert or update of message, detail on profileguard.events
    for each row execute function profileguard.redact_event();

create or replace function profileguard.redact_repair_state()
returns trigger
language plpgsql
set search_path = ''
as $pg$
begin
    new.last_message := profileguard.redact_error(new.last_message);
    return new;
end
$pg$;

create trigger redact_before_write
    before insert or update of last_message on profileguard.repair_state
    for each row execute function profileguard.redact_repair_state();

-- What was stored before this version.
update profileguard.events set message = message
where kind in ('failure', 'quarantine') and (message is not null or detail ? 'detail');
update profileguard.repair_state set last_message = last_message where last_message is not null;
update profileguard.repair_state r set history = (
    select coalesce(pg_catalog.jsonb_agg(case when e ? 'message'
        then pg_catalog.jsonb_set(e, '{message}',
                                  pg_catalog.to_jsonb(profileguard.redact_error(e ->> 'message')))
        else e end order by n), '[]'::jsonb)
    from pg_catalog.jsonb_array_elements(r.history) with ordinality as h(e, n))
where pg_catalog.jsonb_typeof(r.history) = 'array';

-- profileguard schema, version 9: stored failure messages keep no row values. Every write goes
-- through profileguard.redact_error (functions/failures.sql), by the triggers below, which need
-- those functions: they run after the functions are created.

-- after the functions:

create trigger redact_before_write
    before insert or update of message, detail on profileguard.events
    for each row execute function profileguard.redact_event();

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

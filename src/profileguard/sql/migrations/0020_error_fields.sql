-- profileguard schema, version 20: failure events keep their error's fields (schema, table,
-- column, constraint and data type names, in detail), and every stored message loses each quoted
-- or parenthesised value whatever its shape (profileguard.strip_values, functions/failures.sql),
-- drift_state's too. redact_error and record_failure take the fields too: their earlier
-- signatures are dropped.
drop function if exists profileguard.redact_error(text);
drop function if exists profileguard.record_failure(text, text, text, text);

-- after the functions:

create trigger redact_before_write
    before insert or update of last_message on profileguard.drift_state
    for each row execute function profileguard.redact_drift_state();

-- What was stored before this version, stripped again (the triggers above and in version 9).
update profileguard.events set message = message
where kind in ('failure', 'quarantine') and (message is not null or detail ? 'detail');
update profileguard.repair_state set last_message = last_message where last_message is not null;
update profileguard.repair_state r set history = (
    select coalesce(pg_catalog.jsonb_agg(case when e ? 'message'
        then pg_catalog.jsonb_set(e, '{message}',
                                  pg_catalog.to_jsonb(profileguard.redact_error(e ->> 'message')))
        else e end order by n), '[]'::jsonb)
    from pg_catalog.jsonb_array_elements(r.history) with ordinality as h(e, n))
where pg_catalog.jsonb_typeof(r.history) = 'array' and r.history <> '[]'::jsonb;
update profileguard.drift_state set last_message = last_message where last_message is not null;
update profileguard.breakers set message = profileguard.redact_error(message) where message is not null;

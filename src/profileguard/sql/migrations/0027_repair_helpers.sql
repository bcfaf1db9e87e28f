-- profileguard schema, version 27: the repair engine's helpers folded into their callers
-- (failure_object and probe_cap), fingerprint() names the object too, mark_user_specific() closes
-- the breaker with its caller's reason; their earlier signatures are dropped, and repair_ids(),
-- the engine's name before version 15, whatever its key type.
drop function if exists profileguard.failure_object(text, text, text, text);
drop function if exists profileguard.probe_cap(text);
drop function if exists profileguard.fingerprint(text, text, text);
drop function if exists profileguard.mark_user_specific(text, text, text, text, double precision);
do $pg$
declare
    v_function pg_catalog.regprocedure;
begin
    for v_function in
        select p.oid from pg_catalog.pg_proc p
        where p.pronamespace = 'profileguard'::pg_catalog.regnamespace and p.proname = 'repair_ids'
    loop
        execute pg_catalog.format('drop function %s', v_function);
    end loop;
end
$pg$;

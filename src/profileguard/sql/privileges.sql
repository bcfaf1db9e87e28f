-- Nothing in the profileguard schema is reachable by clients: no EXECUTE or table access for
-- PUBLIC, anon or authenticated. service_role (where it exists) may call ensure_profile.
alter default privileges in schema profileguard revoke execute on functions from public;

do $pg$
declare
    v_role text;
    v_function regprocedure;
begin
    for v_role in
        select r from pg_catalog.unnest(array['public', 'anon', 'authenticated']) r
        where r = 'public' or exists (select from pg_catalog.pg_roles where rolname = r)
    loop
        execute format('revoke all on schema profileguard from %1$I;'
                       ' revoke all on all functions in schema profileguard from %1$I;'
                       ' revoke all on all tables in schema profileguard from %1$I;'
                       ' revoke all on all sequences in schema profileguard from %1$I', v_role);
    end loop;
    if exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
        grant usage on schema profileguard to service_role;
        for v_function in
            select p.oid::regprocedure from pg_catalog.pg_proc p
            where p.pronamespace = 'profileguard'::regnamespace and p.proname = 'ensure_profile'
        loop
            execute format('grant execute on function %s to service_role', v_function);
        end loop;
    end if;
end
$pg$;

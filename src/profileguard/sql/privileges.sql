-- Nothing in the profileguard schema is reachable by clients: no EXECUTE or table access for
-- PUBLIC, anon or authenticated. service_role (where it exists) may call ensure_profile.
revoke all on schema profileguard from public;
revoke all on all functions in schema profileguard from public;
revoke all on all tables in schema profileguard from public;
revoke all on all sequences in schema profileguard from public;
alter default privileges in schema profileguard revoke execute on functions from public;

do $pg$
declare
    v_role text;
    v_function regprocedure;
begin
    foreach v_role in array array['anon', 'authenticated'] loop
        if exists (select from pg_catalog.pg_roles where rolname = v_role) then
            execute format('revoke all on schema profileguard from %I', v_role);
            execute format('revoke all on all functions in schema profileguard from %I', v_role);
            execute format('revoke all on all tables in schema profileguard from %I', v_role);
            execute format('revoke all on all sequences in schema profileguard from %I', v_role);
        end if;
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

-- Every profileguard table has RLS on and the restrictive owner_only policy (migration 18): those
-- of later migrations too, whatever order they land in. Only a table that lacks either is
-- altered, so a re-install takes no lock on tables the trigger and the worker write.
do $pg$
declare
    v_table regclass;
    v_rls boolean;
begin
    for v_table, v_rls in
        select c.oid::regclass, c.relrowsecurity from pg_catalog.pg_class c
        where c.relnamespace = 'profileguard'::regnamespace and c.relkind in ('r', 'p')
    loop
        if not v_rls then
            execute format('alter table %s enable row level security', v_table);
        end if;
        if not exists (select from pg_catalog.pg_policy p
                       where p.polrelid = v_table and p.polname = 'owner_only') then
            execute format('create policy owner_only on %s as restrictive for all to public'
                           ' using (false) with check (false)', v_table);
        end if;
    end loop;
end
$pg$;

-- profileguard schema, version 18: every profileguard table says who may touch it: its owner
-- alone. profileguard's functions run as the owner (SECURITY DEFINER), whom RLS does not limit
-- (it is not forced), nor superusers and BYPASSRLS roles; clients hold no privilege on these
-- tables (privileges.sql). RLS was on with no policy: that denied everyone else too, but read like
-- a policy left out (Supabase's linter: rls_enabled_no_policy). A restrictive policy that is false
-- for every role says it outright, and still denies if a permissive policy or a grant is added.
-- privileges.sql, which every install runs after the migrations, gives it to the tables of later
-- migrations too, whatever order they land in; a table that has it already is left alone.
do $pg$
declare
    v_table regclass;
begin
    for v_table in
        select c.oid::regclass from pg_catalog.pg_class c
        where c.relnamespace = 'profileguard'::regnamespace and c.relkind in ('r', 'p')
          and not exists (select from pg_catalog.pg_policy p
                          where p.polrelid = c.oid and p.polname = 'owner_only')
    loop
        execute format('alter table %s enable row level security', v_table);
        execute format('create policy owner_only on %s as restrictive for all to public'
                       ' using (false) with check (false)', v_table);
    end loop;
end
$pg$;

-- A login role shaped like hosted Supabase's `postgres`, for the tests and benchmarks: not a
-- superuser (CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS), member of the API roles, every table
-- privilege on auth.users and auth.identities but not their owner (supabase_auth_admin is), USAGE
-- on schema auth but no CREATE there. Run as a superuser in a database that holds
-- supabase_auth.sql; {role} / {role_name} are the role's name (roles are cluster-wide: the caller
-- serialises concurrent runs). The database's owner should be this role (CREATE in it, and in
-- schema public, which pg_database_owner owns).
do $pg$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = {role_name}) then
        execute format('create role %I login', {role_name});
    end if;
end
$pg$;
alter role {role} login nosuperuser createrole createdb replication bypassrls;
grant anon, authenticated, service_role to {role};
revoke create on schema auth from {role};
grant usage on schema auth to {role};
grant all on table auth.users, auth.identities to {role};

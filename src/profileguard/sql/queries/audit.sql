-- Catalog queries of `profileguard audit`. Each starts with a "-- name:" line; %(x)s are bound
-- parameters, {x} are identifiers composed with psycopg.sql. All are read-only. The security
-- checks follow the spirit of Supabase's linter (splinter lints 0002, 0011, 0013, 0028, 0029).

-- name: profile_writers
-- Functions outside system schemas whose body inserts into, updates or merges into the profile
-- table (matched by name; %(pattern)s is a case-insensitive regular expression).
select p.oid::regprocedure::text as function,
       p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype as is_trigger,
       p.prosecdef as security_definer
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where n.nspname not in ('pg_catalog', 'information_schema', 'profileguard')
  and n.nspname not like 'pg\_%%'
  and p.prokind in ('f', 'p')
  and p.prosrc ~* %(pattern)s
order by 1

-- name: missing_profiles
-- Users without a profile: how many, the oldest signup, a few ids.
select count(*) as missing,
       min({created_at}) as oldest,
       (array_agg(u.{identity_key}::text order by {created_at} nulls last, u.{identity_key}))[1:5]
           as sample
from {identity} u
where not exists (select from {profile} p where p.{profile_key} = u.{identity_key})

-- name: orphan_profiles
-- Profiles whose user is gone.
select count(*) as orphans,
       (array_agg(p.{profile_key}::text order by p.{profile_key}))[1:5] as sample
from {profile} p
where p.{profile_key} is not null
  and not exists (select from {identity} u where u.{identity_key} = p.{profile_key})

-- name: derived_violations
-- How many users' derived value for one column is too long, too short, or shared with another
-- user (or with an existing profile). {value} is the mapping's expression over `u`.
select count(*) filter (where d.v is not null and %(max_length)s::int is not null
                        and char_length(d.v) > %(max_length)s::int) as too_long,
       count(*) filter (where d.v is not null and %(min_length)s::int is not null
                        and char_length(d.v) < %(min_length)s::int) as too_short,
       count(*) filter (where %(unique)s and d.v is not null and (d.n > 1 or exists (
           select from {profile} p
           where p.{column}::text = d.v and p.{profile_key} is distinct from d.k))) as duplicate
from (select u.{identity_key} as k, {value} as v,
             count(*) over (partition by {value}) as n
      from {identity} u
      where not exists (select from {profile} p where p.{profile_key} = u.{identity_key})) d

-- name: column_constraints
-- Unique (single-column) and check constraints on one column of a table.
select c.conname as name, c.contype::text as kind, pg_catalog.pg_get_constraintdef(c.oid) as definition
from pg_catalog.pg_constraint c
join pg_catalog.pg_attribute a on a.attrelid = c.conrelid and a.attnum = any (c.conkey)
where c.conrelid = %(oid)s and a.attname = %(column)s
  and (c.contype = 'c' or (c.contype = 'u' and cardinality(c.conkey) = 1))
order by c.conname

-- name: identity_foreign_keys
-- Foreign keys to the identity table that neither cascade nor clear on delete: they block
-- deleting a user.
select c.conname as name,
       c.conrelid::regclass::text as table_name,
       c.confdeltype::text as on_delete,
       pg_catalog.pg_get_constraintdef(c.oid) as definition
from pg_catalog.pg_constraint c
where c.contype = 'f' and c.confrelid = %(oid)s and c.confdeltype in ('a', 'r')
order by 2, 1

-- name: secdef_mutable_search_path
-- SECURITY DEFINER functions without a fixed search_path (splinter 0011, for definer functions).
select p.oid::regprocedure::text as function, n.nspname as schema
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where p.prosecdef
  and not exists (select from unnest(coalesce(p.proconfig, '{{}}'::text[])) c
                  where c like 'search\_path=%%')
  and n.nspname <> all (%(excluded)s::text[])
  and n.nspname not like 'pg\_%%'
  and not exists (select from pg_catalog.pg_depend d
                  where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                    and d.deptype = 'e')
order by 1

-- name: privileged_executable
-- SECURITY DEFINER functions that PUBLIC, anon or authenticated may execute (splinter 0028/0029).
select p.oid::regprocedure::text as function,
       p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype as is_trigger,
       array(select r from unnest(%(roles)s::text[]) r
             where pg_catalog.has_function_privilege(r, p.oid, 'EXECUTE')) as grantees
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where p.prosecdef
  and n.nspname <> all (%(excluded)s::text[])
  and n.nspname not like 'pg\_%%'
  and exists (select from unnest(%(roles)s::text[]) r
              where pg_catalog.has_function_privilege(r, p.oid, 'EXECUTE'))
  and not exists (select from pg_catalog.pg_depend d
                  where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                    and d.deptype = 'e')
order by 1

-- name: rls_disabled
-- Tables with RLS off that PUBLIC, anon or authenticated can reach (schema USAGE and a table
-- privilege) (splinter 0013, by privilege rather than by schema name).
select c.oid::regclass::text as table_name,
       array(select r from unnest(%(roles)s::text[]) r
             where pg_catalog.has_schema_privilege(r, n.oid, 'USAGE')
               and pg_catalog.has_table_privilege(r, c.oid, 'SELECT, INSERT, UPDATE, DELETE'))
           as grantees
from pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p') and not c.relrowsecurity
  and n.nspname <> all (%(excluded)s::text[])
  and n.nspname not like 'pg\_%%'
  and exists (select from unnest(%(roles)s::text[]) r
              where pg_catalog.has_schema_privilege(r, n.oid, 'USAGE')
                and pg_catalog.has_table_privilege(r, c.oid, 'SELECT, INSERT, UPDATE, DELETE'))
order by 1

-- name: views_exposing_identity
-- Views and materialized views over the identity table that PUBLIC, anon or authenticated may
-- select from (splinter 0002).
select distinct c.oid::regclass::text as view_name,
       c.relkind::text as kind,
       array(select r from unnest(%(roles)s::text[]) r
             where pg_catalog.has_table_privilege(r, c.oid, 'SELECT')) as grantees
from pg_catalog.pg_depend d
join pg_catalog.pg_rewrite w on w.oid = d.objid
join pg_catalog.pg_class c on c.oid = w.ev_class
where d.classid = 'pg_catalog.pg_rewrite'::regclass
  and d.refobjid = %(oid)s and d.deptype = 'n'
  and c.relkind in ('v', 'm') and c.oid <> %(oid)s
  and exists (select from unnest(%(roles)s::text[]) r
              where pg_catalog.has_table_privilege(r, c.oid, 'SELECT'))
order by 1

-- name: profile_table_grants
-- Table privileges that PUBLIC, anon or authenticated hold directly on the profile table, among
-- %(privileges)s (MAINTAIN exists from PostgreSQL 17 and is simply not found before).
select case when a.grantee = 0 then 'public' else a.grantee::regrole::text end as grantee,
       array_agg(a.privilege_type::text order by a.privilege_type) as privileges
from pg_catalog.pg_class c
cross join lateral pg_catalog.aclexplode(c.relacl) a
where c.oid = %(oid)s
  and a.privilege_type = any (%(privileges)s::text[])
  and (case when a.grantee = 0 then 'public' else a.grantee::regrole::text end)
      = any (%(roles)s::text[])
group by 1
order by 1

-- name: username_update_grants
-- Roles among %(roles)s granted UPDATE on the profile table's username column itself (tables
-- made by earlier versions of `install --create-profile-table` granted it to authenticated).
select case when a.grantee = 0 then 'public' else a.grantee::regrole::text end as grantee
from pg_catalog.pg_attribute t
cross join lateral pg_catalog.aclexplode(t.attacl) a
where t.attrelid = %(oid)s and t.attname = %(column)s and not t.attisdropped
  and a.privilege_type = 'UPDATE'
  and (case when a.grantee = 0 then 'public' else a.grantee::regrole::text end)
      = any (%(roles)s::text[])
order by 1

-- name: profile_foreign_triggers
-- Triggers on the profile table whose function belongs to neither the table's owner nor
-- profileguard's installer (the owner of the profileguard schema): they run inside every write,
-- profileguard's SECURITY DEFINER ones included.
select t.tgname as name,
       t.tgfoid::regprocedure::text as function,
       pg_catalog.pg_get_userbyid(p.proowner)::text as function_owner,
       p.prosecdef as security_definer
from pg_catalog.pg_trigger t
join pg_catalog.pg_proc p on p.oid = t.tgfoid
join pg_catalog.pg_class c on c.oid = t.tgrelid
where t.tgrelid = %(oid)s and not t.tgisinternal
  and p.proowner <> c.relowner
  and p.proowner is distinct from (select n.nspowner from pg_catalog.pg_namespace n
                                   where n.nspname = 'profileguard')
order by t.tgname

-- name: client_roles
-- The roles whose reach the security checks measure: PUBLIC and Supabase's API roles.
select array['public'] || array(select rolname::text from pg_catalog.pg_roles
                                 where rolname in ('anon', 'authenticated') order by rolname)
    as roles

-- name: workers
-- Workers: how many, the last heartbeat, and how many beat recently and still run.
select count(*) as workers,
       max(heartbeat_at) as last_heartbeat,
       count(*) filter (where heartbeat_at > now() - make_interval(secs => %(alive_seconds)s)
                        and coalesce(stats ->> 'state', 'running') <> 'stopped') as alive
from profileguard.workers

-- name: installed_function_source
-- The body of one of profileguard's functions, as installed.
select p.prosrc as source
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where n.nspname = 'profileguard' and p.proname = %(name)s

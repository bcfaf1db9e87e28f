-- Catalog queries of `install --replace-trigger` / `--keep-trigger`, `uninstall` and `audit`.
-- Each starts with a "-- name:" line; %(x)s are bound parameters. Run with an empty search_path,
-- so that the definitions they return name every object with its schema.

-- name: legacy_trigger
-- One trigger on the identity table, what its function is, and whether this role may replace
-- that function's body (it owns the function, and no other trigger uses it).
select t.tgname as name,
       t.tgenabled::text as mode,
       t.tgisinternal as internal,
       t.tgconstraint <> 0 as is_constraint,
       t.tgtype::integer as type,
       t.tgoldtable as old_table,
       t.tgnewtable as new_table,
       t.tgargs as args,
       t.tgnargs as nargs,
       array(select a.attname::text
             from unnest(t.tgattr::int2[]) with ordinality k(attnum, i)
             join pg_catalog.pg_attribute a on a.attrelid = t.tgrelid and a.attnum = k.attnum
             order by k.i) as update_columns,
       pg_catalog.pg_get_triggerdef(t.oid) as trigger_definition,
       t.tgqual is not null
           and pg_catalog.pg_get_triggerdef(t.oid) like '%% WHEN (false) EXECUTE %%' as never_fires,
       p.oid::regprocedure::text as function,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(p.proname)
           as function_name,
       l.lanname as language,
       p.prosrc as source,
       pg_catalog.pg_has_role(p.proowner, 'MEMBER') as owns_function,
       (select count(*) from pg_catalog.pg_trigger o where o.tgfoid = p.oid)::integer
           as function_uses,
       case when l.lanname in ('plpgsql', 'sql') then pg_catalog.pg_get_functiondef(p.oid) end
           as function_definition
from pg_catalog.pg_trigger t
join pg_catalog.pg_proc p on p.oid = t.tgfoid
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
join pg_catalog.pg_language l on l.oid = p.prolang
where t.tgrelid = %(oid)s and t.tgname = %(name)s

-- name: identity_triggers
-- Every user trigger on the identity table, with what its function is and does (audit's and
-- install's one view of them: takeover.identity_triggers).
select t.tgname as name,
       t.tgenabled::text as mode,
       t.tgfoid::regprocedure::text as function,
       p.prosecdef as security_definer,
       exists (select from unnest(coalesce(p.proconfig, '{}'::text[])) c
               where c like 'search\_path=%%') as fixed_search_path,
       l.lanname as language,
       coalesce(p.prosrc, '') as source,
       (t.tgtype & 1) <> 0 as for_each_row,
       (t.tgtype & 4) <> 0 as on_insert,
       (t.tgtype & 16) <> 0 as on_update,
       (t.tgtype & 8) <> 0 as on_delete,
       t.tgqual is not null
           and pg_catalog.pg_get_triggerdef(t.oid) like '%% WHEN (false) EXECUTE %%' as never_fires
from pg_catalog.pg_trigger t
join pg_catalog.pg_proc p on p.oid = t.tgfoid
join pg_catalog.pg_language l on l.oid = p.prolang
where t.tgrelid = %(oid)s and not t.tgisinternal
order by t.tgname

-- name: function_source
select p.prosrc as source from pg_catalog.pg_proc p where p.oid = to_regprocedure(%(function)s)

-- name: profileguard_trigger_current
-- True when profileguard's trigger exists as trigger.sql creates it (and is enabled).
select exists (
    select from pg_catalog.pg_trigger t
    where t.tgrelid = %(oid)s and t.tgname = 'profileguard_after_insert'
      and t.tgenabled = 'O'
      and t.tgfoid = pg_catalog.to_regprocedure('profileguard.on_identity_insert()')
      and t.tgtype = 4 and t.tgnewtable = 'pg_new_users' and t.tgoldtable is null
      and t.tgqual is null and t.tgnargs = 0 and t.tgattr = ''::int2vector
) as current

-- name: kept_triggers
-- The triggers on the identity table that `install --keep-trigger` kept beside profileguard.
select trigger_name from profileguard.kept_triggers where table_name = %(table)s

-- name: sync_triggers_current
-- True when both UPDATE triggers exist, enabled, calling their functions, on the columns %(watched)s
-- (sync_triggers.sql creates them so; their WHEN changes only with the configuration or the package).
select pg_catalog.count(*) = 2 as current
from pg_catalog.pg_trigger t
where t.tgrelid = %(oid)s and t.tgenabled = 'O'
  and (t.tgname = 'profileguard_after_update_row'
       and t.tgfoid = pg_catalog.to_regprocedure('profileguard.on_identity_update_row()')
       or t.tgname = 'profileguard_after_update'
       and t.tgfoid = pg_catalog.to_regprocedure('profileguard.on_identity_update()'))
  and array(select a.attname::text
            from pg_catalog.unnest(t.tgattr::int2[]) k(attnum)
            join pg_catalog.pg_attribute a on a.attrelid = t.tgrelid and a.attnum = k.attnum
            order by 1) = array(select c from pg_catalog.unnest(%(watched)s::text[]) c order by 1)

-- name: foreign_key_to
-- Whether the profile table has a foreign key to the identity table.
select exists (
    select from pg_catalog.pg_constraint c
    where c.conrelid = %(profile)s and c.confrelid = %(identity)s and c.contype = 'f'
) as present

-- name: learned_mappings_readable
-- Whether this role may read what takeovers learned (a client's role may not: then nothing is).
select coalesce(pg_catalog.bool_and(pg_catalog.has_schema_privilege(n.oid, 'usage')
                                and pg_catalog.has_table_privilege(c.oid, 'select')),
                false) as readable
from pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'profileguard' and c.relname = 'replaced_triggers'

-- name: learned_mappings
-- What each takeover of a trigger on the identity table learned of its function, and the
-- function's definition (saved, or still in the catalog) where an earlier version learned nothing.
-- Read through to_jsonb(r): before schema version 7 there is no method, before 23 nothing learned.
select r.trigger_name,
       r.function_name,
       pg_catalog.to_jsonb(r) -> 'learned_mapping' as learned,
       case when pg_catalog.to_jsonb(r) ->> 'method' = 'function'
            then pg_catalog.to_jsonb(r) ->> 'saved_definition'
            else (select pg_catalog.pg_get_functiondef(p.oid)
                  from pg_catalog.pg_proc p
                  join pg_catalog.pg_language l on l.oid = p.prolang
                  where p.oid = pg_catalog.to_regprocedure(r.function_name)
                    and l.lanname = 'plpgsql')
       end as definition
from profileguard.replaced_triggers r
where r.table_name = %(table)s
order by r.trigger_name

-- Named queries. Each starts with a "-- name:" line; %(x)s are bound parameters.

-- name: table_oid
select to_regclass(%(table)s)::oid as oid

-- name: table_columns
select a.attname as name,
       format_type(a.atttypid, a.atttypmod) as type,
       t.typcategory as category,
       a.attnotnull as not_null,
       (a.atthasdef or a.attidentity <> '' or a.attgenerated <> '') as has_default,
       a.attgenerated <> '' as generated,
       case when t.typcategory = 'S' and a.atttypmod > 4 then a.atttypmod - 4 end as max_length,
       case when a.attgenerated = '' then pg_catalog.pg_get_expr(d.adbin, d.adrelid) end
           as default_expr
from pg_catalog.pg_attribute a
join pg_catalog.pg_type t on t.oid = a.atttypid
left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where a.attrelid = %(oid)s and a.attnum > 0 and not a.attisdropped
order by a.attnum

-- name: unique_columns
select a.attname as name, i.indisprimary as is_primary
from pg_catalog.pg_index i
join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
where i.indrelid = %(oid)s and i.indisunique and i.indnkeyatts = 1
  and i.indexprs is null and i.indpred is null

-- name: check_constraints
select pg_catalog.pg_get_constraintdef(c.oid) as definition
from pg_catalog.pg_constraint c
where c.conrelid = %(oid)s and c.contype = 'c'

-- name: schema_exists
select exists (select from pg_catalog.pg_namespace where nspname = 'profileguard') as installed

-- name: installed_version
select coalesce(max(version), 0) as version from profileguard.migrations

-- name: settings
select enabled, strict, identity_table, identity_key, profile_table, profile_key,
       config, package_version, installed_at, updated_at
from profileguard.settings

-- name: role_exists
select exists (select from pg_catalog.pg_roles where rolname = %(role)s) as exists

-- name: function_exists
select to_regprocedure(%(signature)s) is not null as exists

-- name: cron_available
-- pg_cron works only when the server preloads it (or it is already created, as on Supabase).
-- pg_settings shows shared_preload_libraries only to roles that may read it (current_setting()
-- would raise for the others): for them, only an extension already created counts.
select exists (select from pg_catalog.pg_available_extensions where name = 'pg_cron') as available,
       exists (select from pg_catalog.pg_extension where extname = 'pg_cron')
       or exists (select from pg_catalog.pg_settings s
                  where s.name = 'shared_preload_libraries'
                    and s.setting ~ '(^|[\s,"/])pg_cron([\s,"]|$)') as loaded

-- name: cron_schedule
select cron.schedule(%(name)s, %(schedule)s, %(command)s)

-- name: applied_versions
select version from profileguard.migrations order by version

-- name: identity_trigger
select t.tgname as name, t.tgenabled::text as mode, t.tgisinternal as internal,
       t.tgfoid::regprocedure::text as function
from pg_catalog.pg_trigger t
where t.tgrelid = %(oid)s and t.tgname = %(name)s

-- name: replaced_triggers
select table_name, trigger_name, function_name, previous_mode, method, saved_definition,
       replaced_at
from profileguard.replaced_triggers
order by replaced_at, trigger_name

-- name: unique_indexes
-- Every unique index of a table: its first key (column name or expression, as the server
-- prints it), how many keys, the predicate of a partial index and a collation other than the
-- key column's (NULL when it is the column's own).
select i.indexrelid::pg_catalog.regclass::text as name,
       pg_catalog.pg_get_indexdef(i.indexrelid, 1, true) as key,
       i.indkey[0] as attnum,
       i.indnkeyatts as keys,
       i.indisprimary as is_primary,
       pg_catalog.pg_get_expr(i.indpred, i.indrelid, true) as predicate,
       (select pg_catalog.format('%%I.%%I', n.nspname, c.collname)
        from pg_catalog.pg_collation c join pg_catalog.pg_namespace n on n.oid = c.collnamespace
        where c.oid = i.indcollation[0] and c.oid <> 100
          and c.oid is distinct from (select a.attcollation from pg_catalog.pg_attribute a
                                      where a.attrelid = i.indrelid
                                        and a.attnum = i.indkey[0])) as collation
from pg_catalog.pg_index i
where i.indrelid = %(oid)s and i.indisunique

-- name: checks_by_column
-- CHECK constraints with the columns each references.
select c.conname as name,
       pg_catalog.pg_get_constraintdef(c.oid, true) as definition,
       array(select a.attname::text from pg_catalog.pg_attribute a
             where a.attrelid = c.conrelid and a.attnum = any(c.conkey)
             order by a.attnum) as columns
from pg_catalog.pg_constraint c
where c.conrelid = %(oid)s and c.contype = 'c'

-- name: unicode_collation
-- A collation whose lower() maps every script, not only ASCII (NULL when there is none).
select pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.collname) as collation
from pg_catalog.pg_collation c join pg_catalog.pg_namespace n on n.oid = c.collnamespace
where c.collname in ('pg_unicode_fast', 'unicode', 'und-x-icu', 'pg_c_utf8')
  and c.collencoding in (-1, pg_catalog.pg_char_to_encoding('UTF8'))
order by array_position(array['pg_unicode_fast', 'unicode', 'und-x-icu', 'pg_c_utf8'],
                        c.collname::text)
limit 1

-- name: column_types
-- The types of some columns of a table, as format_type prints them; run with only pg_catalog
-- searched (install/render.py), so that every other type comes out schema-qualified.
select a.attname as name, pg_catalog.format_type(a.atttypid, a.atttypmod) as type
from pg_catalog.pg_attribute a
where a.attrelid = %(oid)s and a.attname = any(%(names)s::text[]) and a.attnum > 0
  and not a.attisdropped

-- name: deregister_worker
-- A worker that stops cleanly removes its row: profileguard.workers lists the running ones.
delete from profileguard.workers where worker_id = %(worker_id)s

-- name: render_flags
-- The flags the sign-up and login triggers fold as constants, from the settings row (install).
select profileguard.render_flags(s.enabled, s.strict) from profileguard.settings s where s.singleton

-- name: deferrable_constraints
-- The deferrable constraints of a table (keys, exclusions, foreign keys, constraint triggers),
-- schema-qualified as SET CONSTRAINTS names them, with their declared mode.
select n.nspname as schema, c.conname as name, c.condeferred as initially_deferred,
       c.contype::text as kind,
       (c.contype in ('p', 'u') and c.conkey = array[(
            select a.attnum from pg_catalog.pg_attribute a
            where a.attrelid = c.conrelid and a.attname = %(key)s)]::pg_catalog.int2[]) as on_key
from pg_catalog.pg_constraint c
join pg_catalog.pg_namespace n on n.oid = c.connamespace
where c.conrelid = %(oid)s and c.condeferrable
order by c.conname

-- name: lock_waiting_indexes
-- The indexes an INSERT into a table may wait on, once each: unique and exclusion indexes (a
-- key an in-flight transaction holds), but the one on the profile key alone (a new user's key
-- is held by no other transaction: its user is not committed yet).
select count(*) as count
from pg_catalog.pg_index i
where i.indrelid = %(oid)s and (i.indisunique or i.indisexclusion)
  and not (i.indnkeyatts = 1 and i.indexprs is null and i.indpred is null
           and i.indkey[0] = (select a.attnum from pg_catalog.pg_attribute a
                              where a.attrelid = i.indrelid and a.attname = %(key)s))

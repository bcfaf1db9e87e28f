-- Named queries of the mapping's re-plan (profileguard.install.replan, install.templates): the
-- generated functions compared with the installed ones after the profile table changes.

-- name: installed_config
select s.config from profileguard.settings s where s.singleton

-- name: installed_bodies
-- Every profileguard function's name, body and SET clause: what a rendered CREATE FUNCTION would
-- change.
select p.proname, p.prosrc, p.proconfig
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where n.nspname = 'profileguard'

-- name: last_install_source
-- Who installed last: 'install', 'upgrade', or a rendered file applied as a migration.
select e.source from profileguard.events e
where e.kind = 'config' and e.source in ('install', 'upgrade', %(migration)s)
order by e.id desc
limit 1

-- name: record_mapping_stale
update profileguard.catalog_seen c set mapping_stale = %(reason)s
where c.singleton and c.mapping_stale is distinct from %(reason)s

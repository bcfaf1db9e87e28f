-- Stops a file rendered by `profileguard sql` when the database it runs in is not like the one it
-- was rendered for: the identity or profile table has other columns (or is missing, or exists
-- where it did not), or profileguard is at another schema version.
do $pg$
declare
    v_identity text := {identity};
    v_profile text := {profile};
    v_version integer := 0;
begin
    if to_regclass('profileguard.migrations') is not null then
        select coalesce(max(version), 0) into v_version from profileguard.migrations;
    end if;
    if (select coalesce(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                   || case when a.attnotnull then ' not null' else '' end,
                                   ', ' order by a.attnum), '')
        from pg_catalog.pg_attribute a
        where a.attrelid = to_regclass(v_identity) and a.attnum > 0 and not a.attisdropped)
           is distinct from {identity_signature}
       or (select coalesce(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                      || case when a.attnotnull then ' not null' else '' end,
                                      ', ' order by a.attnum), '')
           from pg_catalog.pg_attribute a
           where a.attrelid = to_regclass(v_profile) and a.attnum > 0 and not a.attisdropped)
           is distinct from {profile_signature}
       or v_version <> {version} then
        raise exception 'profileguard: % or % here differ from the tables this file was rendered for (or profileguard''s schema version does: rendered for %, found %); nothing was changed',
            v_identity, v_profile, {version}, v_version
            using errcode = 'P0001',
                  hint = 'render it again against this database: profileguard sql > supabase/migrations/<timestamp>_profileguard.sql';
    end if;
end
$pg$

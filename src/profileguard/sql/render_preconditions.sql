-- Stops the file before it changes anything when this database differs from the one it was rendered for in
-- what profileguard reads or writes (the columns it uses with their types, whether the profile table exists,
-- the schema version, the triggers a rollback restores), naming every difference. Added columns pass.
do $pg$
declare
    v_identity text := {identity};
    -- [column, type] of each column profileguard uses
    v_identity_columns text[] := {identity_columns};
    v_profile text := {profile};
    v_profile_columns text[] := {profile_columns};
    v_profile_absent boolean := {profile_absent};
    v_replaced_table text := {replaced_table};
    v_replaced text[] := {replaced};
    v_version integer := {version};
    v_search_path text := pg_catalog.current_setting('search_path');
    v_found_version integer := 0;
    v_found_replaced text[] := array[]::text[];
    v_problems text[] := array[]::text[];
begin
    perform pg_catalog.set_config('search_path', 'pg_catalog', true);
    if pg_catalog.to_regclass('profileguard.migrations') is not null then
        select coalesce(max(m.version), 0) into v_found_version from profileguard.migrations m;
    end if;
    if v_found_version <> v_version then
        v_problems := v_problems || format('profileguard''s schema version is %s here, this file was rendered for %s',
                                           v_found_version, v_version);
    end if;
    if pg_catalog.to_regclass(v_identity) is null then
        v_problems := v_problems || format('%s does not exist', v_identity);
        v_identity_columns := array[]::text[];
    end if;
    if v_profile_absent and pg_catalog.to_regclass(v_profile) is not null then
        v_problems := v_problems || format('%s exists here, and this file creates it', v_profile);
    elsif pg_catalog.to_regclass(v_profile) is null and pg_catalog.cardinality(v_profile_columns) > 0 then
        v_problems := v_problems || format('%s does not exist', v_profile);
        v_profile_columns := array[]::text[];
    end if;
    select v_problems || coalesce(array_agg(
               case when a.attname is null then format('%s.%I is missing (expected %s)', e.tab, e.col, e.typ)
                    else format('%s.%I is %s, expected %s', e.tab, e.col, format_type(a.atttypid, a.atttypmod), e.typ)
               end order by e.ord), array[]::text[])
      into v_problems
      from (select v_identity as tab, v_identity_columns[i][1] as col, v_identity_columns[i][2] as typ, i as ord
            from generate_subscripts(v_identity_columns, 1) i
            union all
            select v_profile, v_profile_columns[i][1], v_profile_columns[i][2], i + 10000
            from generate_subscripts(v_profile_columns, 1) i) e
      left join pg_attribute a
        on a.attrelid = to_regclass(e.tab) and a.attname = e.col and a.attnum > 0 and not a.attisdropped
     where a.attname is null or format_type(a.atttypid, a.atttypmod) <> e.typ;
    if v_replaced is not null then
        if pg_catalog.to_regclass('profileguard.replaced_triggers') is not null then
            select coalesce(array_agg(r.trigger_name::text order by r.trigger_name), array[]::text[])
              into v_found_replaced
              from profileguard.replaced_triggers r where r.table_name = v_replaced_table;
        end if;
        if not (v_found_replaced @> v_replaced and v_replaced @> v_found_replaced) then
            v_problems := v_problems || format(
                'the triggers taken over on %s here are: %s; this file restores: %s', v_identity,
                coalesce(nullif(array_to_string(v_found_replaced, ', '), ''), 'none'),
                coalesce(nullif(array_to_string(v_replaced, ', '), ''), 'none'));
        end if;
    end if;
    if cardinality(v_problems) > 0 then
        raise exception using
            errcode = 'object_not_in_prerequisite_state',
            message = 'profileguard: this database differs from the one this file was rendered for (nothing was '
                      || 'changed): ' || array_to_string(v_problems, '; '),
            hint = 'render a new migration after the last one, against a database that has run every migration '
                   || 'before it: profileguard sql > supabase/migrations/<timestamp>_profileguard.sql (a migration '
                   || 'that is applied somewhere stays as it is)';
    end if;
    perform pg_catalog.set_config('search_path', v_search_path, true);
end
$pg$

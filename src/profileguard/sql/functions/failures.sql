-- The audit trail's writers: failure categories, a client's failure, the redaction of what is stored.

-- SQLSTATE → a category an operator can act on: by the code where it decides, else by its class.
create or replace function profileguard.sqlstate_category(p_sqlstate text)
returns text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select case
        when p_sqlstate in ('40001', '40P01', '55P03', '53300') then 'transient'
        when p_sqlstate = '42501' then 'permission'
        when p_sqlstate in ('42P01', '42883', '42703', '3F000', '42704') then 'missing_object'
        else case pg_catalog.left(p_sqlstate, 2)
            when '08' then 'transient' when '57' then 'transient' when '28' then 'permission'
            when '23' then 'constraint' when '22' then 'data' else 'other'
        end
    end
$pg$;

-- `p_text` with everything quoted or in parentheses replaced by … but `p_names` in their delimiters:
-- what failed says what to fix, a value never does. The rules: docs/redaction.md.
create or replace function profileguard.strip_values(p_text text, p_names text[] default '{}')
returns text
language plpgsql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
declare
    c_open constant text := '"''(«»„“‘「';
    c_close constant text := '"'')»«“”’」';
    c_stray constant text := ')”’」';  -- closing only
    v_len integer := pg_catalog.length(p_text);
    v_names text[] := array(select n from pg_catalog.unnest(p_names) n where n <> '');
    v_max integer := coalesce((select max(pg_catalog.length(n)) from pg_catalog.unnest(v_names) n), 0);
    v_starts integer[] := '{}'::integer[];  -- the names in p_text: where each starts and ends
    v_ends integer[] := '{}'::integer[];
    v_t integer := 1;            -- the next of them, at v_next
    v_next integer;
    v_out text := '';
    v_kept integer := 0;         -- the length of v_out after the last name
    v_inside boolean := false;
    v_close text;
    v_c text;
    v_i integer := 1;
    v_p integer := 1;
    v_q integer;
    v_best integer;
begin
    if p_text is null then
        return null;
    end if;
    -- The names: an opening delimiter, one of v_names, its closing delimiter (the longest fit).
    while v_max > 0 loop
        v_p := v_p + pg_catalog.length(pg_catalog.substring(pg_catalog.substr(p_text, v_p), '^[^' || c_open || ']*'));
        exit when v_p > v_len;
        v_close := pg_catalog.substr(c_close, pg_catalog.strpos(c_open, pg_catalog.substr(p_text, v_p, 1)), 1);
        v_best := 0;
        for v_n in 1 .. v_max + 1 loop
            if pg_catalog.substr(p_text, v_p + v_n, 1) = v_close
               and pg_catalog.substr(p_text, v_p + 1, v_n - 1) = any(v_names) then
                v_best := v_n;
            end if;
        end loop;
        if v_best > 0 then
            v_starts := v_starts || v_p;
            v_ends := v_ends || (v_p + v_best);
        end if;
        v_p := v_p + v_best + 1;
    end loop;
    while v_i <= v_len loop
        while v_starts[v_t] < v_i loop
            v_t := v_t + 1;
        end loop;
        v_next := coalesce(v_starts[v_t], v_len + 1);
        if v_i = v_next then
            v_out := v_out || pg_catalog.substr(p_text, v_i, v_ends[v_t] - v_i + 1);
            v_i := v_ends[v_t] + 1;
            v_kept := pg_catalog.length(v_out);
        elsif v_inside then
            -- The value runs to the last closing delimiter before the next name, else on through it.
            v_q := pg_catalog.strpos(pg_catalog.reverse(pg_catalog.substr(p_text, v_i, v_next - v_i)), v_close);
            exit when v_q = 0 and v_next > v_len;
            if v_next - v_q > v_i and pg_catalog.right(v_out, 1) <> '…' then
                v_out := v_out || '…';
            end if;
            if v_q = 0 then
                v_i := v_next;
            else
                v_out := v_out || v_close;
                v_i := v_next - v_q + 1;
                v_inside := false;
            end if;
        else
            -- Outside a value: the text as it is, up to the next delimiter.
            v_q := pg_catalog.length(pg_catalog.substring(pg_catalog.substr(p_text, v_i),
                                                          '^[^' || c_open || c_stray || ']*'));
            v_out := v_out || pg_catalog.substr(p_text, v_i, v_q);
            v_i := v_i + v_q;
            v_c := pg_catalog.substr(p_text, v_i, 1);
            if v_i > v_len or v_i = v_next then
                null;
            elsif pg_catalog.strpos(c_stray, v_c) > 0 then
                -- It closes a value that began after the last name.
                v_out := pg_catalog.left(v_out, v_kept) || '…' || v_c;
                v_i := v_i + 1;
            elsif v_c = '''' and pg_catalog.substr(p_text, v_i - 1, 1) ~ '^[[:alnum:]]$' then
                v_out := v_out || v_c;
                v_i := v_i + 1;
            elsif v_c = '(' and pg_catalog.substr(p_text, v_i - 1, 1) ~ '^[[:alpha:]]$'
                  and pg_catalog.substr(p_text, v_i, 24) ~ '^\([0-9]+(, ?[0-9]+)?\)' then
                v_q := pg_catalog.strpos(pg_catalog.substr(p_text, v_i), ')');
                v_out := v_out || pg_catalog.substr(p_text, v_i, v_q);
                v_i := v_i + v_q;
            else
                v_close := pg_catalog.substr(c_close, pg_catalog.strpos(c_open, v_c), 1);
                v_out := v_out || v_c || '…';
                v_i := v_i + 1;
                v_inside := true;
            end if;
        end if;
    end loop;
    return v_out;
end
$pg$;

-- The names strip_values keeps: the error's fields and those of its table, of the profile and identity
-- tables and of the tables their keys join (docs/redaction.md). Catalog reads only, which wait for no lock.
create or replace function profileguard.error_names(p_fields jsonb default null)
returns text[]
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $pg$
    with t as (
        select c.oid from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where c.relname = p_fields ->> 'table_name' and n.nspname = p_fields ->> 'schema_name'
        union
        select pg_catalog.to_regclass(pg_catalog.format('%I.%I',
                   pg_catalog.split_part(x.name, '.', 1), pg_catalog.split_part(x.name, '.', 2)))
        from profileguard.settings s, lateral (values (s.profile_table), (s.identity_table)) as x(name)
        where s.singleton
    ), k as (  -- the constraints of those tables, and the foreign keys that reference them
        select c.conname, c.conrelid, c.conkey, c.confrelid, c.confkey from pg_catalog.pg_constraint c
        where c.conrelid in (select oid from t) or c.confrelid in (select oid from t)
    ), ix as (
        select i.indexrelid, i.indrelid, i.indkey, i.indnkeyatts, i.indexprs is null as on_columns
        from pg_catalog.pg_index i where i.indrelid in (select oid from t)
    )
    select array(select distinct y.name from (
        select p_fields ->> f.key
        from pg_catalog.unnest(array['schema_name', 'table_name', 'column_name', 'constraint_name',
                                     'datatype_name']) as f(key)
        union all
        select z.name from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace,
             lateral (values (c.relname::text), (n.nspname::text), (n.nspname || '.' || c.relname)) as z(name)
        where c.oid in (select oid from t union all select conrelid from k union all select confrelid from k)
        union all
        select a.attname::text from pg_catalog.pg_attribute a
        where a.attrelid in (select oid from t) and a.attnum > 0 and not a.attisdropped
        union all
        select k.conname::text from k
        union all
        -- "Key (a, b)=" of a foreign key: its columns on either side, as they are named.
        select (select pg_catalog.string_agg(a.attname::text, ', ' order by o.n)
                from pg_catalog.unnest(s.cols) with ordinality as o(att, n)
                join pg_catalog.pg_attribute a on a.attrelid = s.rel and a.attnum = o.att)
        from k, lateral (values (k.conrelid, k.conkey), (k.confrelid, k.confkey)) as s(rel, cols)
        where s.cols is not null
        union all
        select r.relname::text from ix join pg_catalog.pg_class r on r.oid = ix.indexrelid
        union all
        -- "Key (a, b)=" of an index on columns: its key columns, quoted as pg_get_indexdef does.
        select (select pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' order by o.n)
                from pg_catalog.unnest(ix.indkey::integer[]) with ordinality as o(att, n)
                join pg_catalog.pg_attribute a on a.attrelid = ix.indrelid and a.attnum = o.att
                where o.n <= ix.indnkeyatts)
        from ix where ix.on_columns
    ) as y(name) where y.name <> '')
$pg$;

-- An error's fields and detail as a failure event keeps them (events.detail): those given only.
create or replace function profileguard.error_fields(
    p_schema text, p_table text, p_column text, p_constraint text, p_datatype text, p_detail text
)
returns jsonb
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select nullif(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'schema_name', nullif(p_schema, ''), 'table_name', nullif(p_table, ''),
        'column_name', nullif(p_column, ''), 'constraint_name', nullif(p_constraint, ''),
        'datatype_name', nullif(p_datatype, ''),
        'detail', nullif(pg_catalog.left(p_detail, 2000), ''))), '{}'::jsonb)
$pg$;

-- An error's text as stored: values stripped, the names of what failed kept. A failure of many users
-- repeats its texts: the transaction's last two results are kept in profileguard.redacted_1 and _2.
create or replace function profileguard.redact_error(p_text text, p_fields jsonb default null)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_key text := pg_catalog.md5(pg_catalog.concat_ws(e'\x1f', p_fields ->> 'schema_name',
        p_fields ->> 'table_name', p_fields ->> 'column_name', p_fields ->> 'constraint_name',
        p_fields ->> 'datatype_name', p_text));
    v_last text := pg_catalog.current_setting('profileguard.redacted_1', true);
    v_seen text;
    v_out text;
begin
    if p_text is null then
        return null;
    end if;
    foreach v_seen in array array[v_last, pg_catalog.current_setting('profileguard.redacted_2', true)] loop
        if pg_catalog.left(v_seen, 32) = v_key then
            return pg_catalog.substr(v_seen, 34);
        end if;
    end loop;
    v_out := profileguard.strip_values(p_text, profileguard.error_names(p_fields));
    perform pg_catalog.set_config('profileguard.redacted_2', coalesce(v_last, ''), true);
    perform pg_catalog.set_config('profileguard.redacted_1', v_key || ':' || v_out, true);
    return v_out;
end
$pg$;

-- One failure of a client's own ensure call; `p_fields`: the error's fields and detail (psycopg's names).
create or replace function profileguard.record_failure(
    p_user_id text,
    p_sqlstate text,
    p_message text,
    p_source text default 'client',
    p_fields jsonb default null
)
returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
    insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
    values ('failure', p_source, p_user_id, p_sqlstate,
            profileguard.sqlstate_category(p_sqlstate), left(p_message, 2000),
            profileguard.error_fields(p_fields ->> 'schema_name', p_fields ->> 'table_name',
                                      p_fields ->> 'column_name', p_fields ->> 'constraint_name',
                                      p_fields ->> 'datatype_name', p_fields ->> 'detail'));
$pg$;

-- Every failure event is redacted as it is written, whoever writes it.
create or replace function profileguard.redact_event()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
begin
    if new.kind in ('failure', 'quarantine') then
        new.message := profileguard.redact_error(new.message, new.detail);
        if pg_catalog.jsonb_typeof(new.detail -> 'detail') <> 'null' then
            new.detail := pg_catalog.jsonb_set(new.detail, '{detail}', pg_catalog.to_jsonb(
                profileguard.redact_error(new.detail ->> 'detail', new.detail)));
        end if;
    end if;
    return new;
end
$pg$;

-- repair_state and drift_state keep no fields: the names kept are the profile and identity tables'.
create or replace function profileguard.redact_repair_state()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
begin
    new.last_message := profileguard.redact_error(new.last_message);
    return new;
end
$pg$;

create or replace function profileguard.redact_drift_state()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
begin
    new.last_message := profileguard.redact_error(new.last_message);
    return new;
end
$pg$;

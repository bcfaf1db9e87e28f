-- The UPDATE triggers, sync and drift functions install generates for the default
-- configuration (username never, other columns fill_empty, mapped columns but the username
-- redacted on soft delete). Rewritten by `make golden`; checked by tests/test_golden.py.

-- Profiles follow their users after creation: the UPDATE triggers, the set-based sync they and the
-- worker share, and the drift finder. Rendered with psycopg.sql at install time from the [sync]
-- policies and [delete] redact columns (mapping.py builds the statements); identity, profile and
-- the keys are quoted identifiers.

-- True when the row version with xmin `p_xid` was written by the current transaction (or one of
-- its subtransactions): a visible row whose writer is still in progress can only be ours. The
-- 32-bit xid is widened around the current transaction's own id (every xid a row we can see
-- carries lies within 2^31 of it, and none is beyond the next xid).
create or replace function profileguard.written_in_this_transaction(p_xid xid)
returns boolean
language sql
volatile
set search_path = pg_catalog, pg_temp
as $pg$
    select case
        when p_xid::text::bigint < 3 then false
        else pg_catalog.pg_xact_status((case when x.d < 2147483648 then x.top + x.d
                                             else x.top - (4294967296 - x.d) end)::text::xid8)
             = 'in progress'
    end
    from (
        select t.top, (p_xid::text::bigint - t.top) & 4294967295 as d
        from (select pg_catalog.pg_current_xact_id()::text::bigint as top) t
    ) x
$pg$;

-- Bring the profiles of `p_ids` (every user's, when null) in line with their users: follow
-- columns take the source value, fill_empty columns take it while empty (or, with `p_own_tx`,
-- while the profile is one this transaction created: an admin-created user updated after its
-- insert), soft-deleted users get the redacted columns cleared (redaction wins over follow).
-- Only profiles that differ are written. Outside the trigger each change is recorded as a
-- 'repair' by `p_source`; the trigger's statement names no profileguard table (each PL/pgSQL
-- statement is planned and locks its tables only when it first runs), so a lock on one never
-- stalls or loses a sync. Deferrable constraints on the profile table are checked before it
-- returns (see on_identity_insert). Returns how many profiles were written.
create or replace function profileguard.sync_profiles(
    p_ids uuid[], p_source text, p_own_tx boolean default false
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $pg$
declare
    v_count integer;
begin
    if p_ids is null and p_source = 'trigger' then
        perform pg_catalog.set_config('enable_seqscan', 'on', true);
        with synced as (
            UPDATE public.profiles AS p
            SET full_name = CASE
                              WHEN (p.full_name IS NULL
                                 OR btrim(CAST(p.full_name AS text)) = ''
                                 OR FALSE)
                               AND CAST(s.pg_c0 AS text) IS NOT NULL
                                THEN CAST(s.pg_c0 AS text)
                              ELSE p.full_name
                            END,
                avatar_url = CASE
                               WHEN (p.avatar_url IS NULL
                                  OR btrim(CAST(p.avatar_url AS text)) = ''
                                  OR FALSE)
                                AND CAST(s.pg_c1 AS text) IS NOT NULL
                                 THEN CAST(s.pg_c1 AS text)
                               ELSE p.avatar_url
                             END
            FROM (SELECT u.id AS pg_key,
                         COALESCE(NULLIF(btrim(u.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                         ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')) AS pg_c0,
                         COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'avatar_url'), ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'picture'), '')) AS pg_c1,
                         u.deleted_at IS NOT NULL AS pg_deleted
                  FROM auth.users AS u) AS s
            WHERE p.id = s.pg_key
              AND NOT s.pg_deleted
              AND (((p.full_name IS NULL OR btrim(CAST(p.full_name AS text)) = '' OR FALSE)
                AND CAST(s.pg_c0 AS text) IS NOT NULL
                AND p.full_name IS DISTINCT FROM CAST(s.pg_c0 AS text))
                OR ((p.avatar_url IS NULL OR btrim(CAST(p.avatar_url AS text)) = '' OR FALSE)
                AND CAST(s.pg_c1 AS text) IS NOT NULL
                AND p.avatar_url IS DISTINCT FROM CAST(s.pg_c1 AS text)))
            RETURNING p.id
        ), redacted as (
            UPDATE public.profiles AS p
            SET full_name = NULL, avatar_url = NULL
            FROM (SELECT u.id AS pg_key, u.deleted_at IS NOT NULL AS pg_deleted
                  FROM auth.users AS u) AS s
            WHERE p.id = s.pg_key
              AND s.pg_deleted
              AND (p.full_name IS NOT NULL OR p.avatar_url IS NOT NULL)
            RETURNING p.id
        )
        select (select count(*) from synced) + (select count(*) from redacted) into v_count;
        return v_count;
    elsif p_ids is null then
        perform pg_catalog.set_config('enable_seqscan', 'on', true);
        with synced as (
            UPDATE public.profiles AS p
            SET full_name = CASE
                              WHEN (p.full_name IS NULL
                                 OR btrim(CAST(p.full_name AS text)) = ''
                                 OR FALSE)
                               AND CAST(s.pg_c0 AS text) IS NOT NULL
                                THEN CAST(s.pg_c0 AS text)
                              ELSE p.full_name
                            END,
                avatar_url = CASE
                               WHEN (p.avatar_url IS NULL
                                  OR btrim(CAST(p.avatar_url AS text)) = ''
                                  OR FALSE)
                                AND CAST(s.pg_c1 AS text) IS NOT NULL
                                 THEN CAST(s.pg_c1 AS text)
                               ELSE p.avatar_url
                             END
            FROM (SELECT u.id AS pg_key,
                         COALESCE(NULLIF(btrim(u.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                         ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')) AS pg_c0,
                         COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'avatar_url'), ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'picture'), '')) AS pg_c1,
                         u.deleted_at IS NOT NULL AS pg_deleted
                  FROM auth.users AS u) AS s
            WHERE p.id = s.pg_key
              AND NOT s.pg_deleted
              AND (((p.full_name IS NULL OR btrim(CAST(p.full_name AS text)) = '' OR FALSE)
                AND CAST(s.pg_c0 AS text) IS NOT NULL
                AND p.full_name IS DISTINCT FROM CAST(s.pg_c0 AS text))
                OR ((p.avatar_url IS NULL OR btrim(CAST(p.avatar_url AS text)) = '' OR FALSE)
                AND CAST(s.pg_c1 AS text) IS NOT NULL
                AND p.avatar_url IS DISTINCT FROM CAST(s.pg_c1 AS text)))
            RETURNING p.id
        ), redacted as (
            UPDATE public.profiles AS p
            SET full_name = NULL, avatar_url = NULL
            FROM (SELECT u.id AS pg_key, u.deleted_at IS NOT NULL AS pg_deleted
                  FROM auth.users AS u) AS s
            WHERE p.id = s.pg_key
              AND s.pg_deleted
              AND (p.full_name IS NOT NULL OR p.avatar_url IS NOT NULL)
            RETURNING p.id
        ), done as (
            select * from synced union all select * from redacted
        ), recorded as (
            insert into profileguard.events (kind, source, user_id)
            select 'repair', p_source, d."id"::text from done d
        )
        select count(*) into v_count from done;
        return v_count;
    end if;
    if p_source = 'trigger' then
        with synced as (
            UPDATE public.profiles AS p
            SET full_name = CASE
                              WHEN (p.full_name IS NULL
                                 OR btrim(CAST(p.full_name AS text)) = ''
                                 OR (p_own_tx AND profileguard.written_in_this_transaction(p.xmin)))
                               AND CAST(s.pg_c0 AS text) IS NOT NULL
                                THEN CAST(s.pg_c0 AS text)
                              ELSE p.full_name
                            END,
                avatar_url = CASE
                               WHEN (p.avatar_url IS NULL
                                  OR btrim(CAST(p.avatar_url AS text)) = ''
                                  OR (p_own_tx AND profileguard.written_in_this_transaction(p.xmin)))
                                AND CAST(s.pg_c1 AS text) IS NOT NULL
                                 THEN CAST(s.pg_c1 AS text)
                               ELSE p.avatar_url
                             END
            FROM (SELECT u.id AS pg_key,
                         COALESCE(NULLIF(btrim(u.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                         ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')) AS pg_c0,
                         COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'avatar_url'), ''),
                                  NULLIF(btrim(u.raw_user_meta_data ->> 'picture'), '')) AS pg_c1,
                         u.deleted_at IS NOT NULL AS pg_deleted
                  FROM auth.users AS u
                  WHERE u.id = ANY(p_ids)) AS s
            WHERE p.id = s.pg_key
              AND NOT s.pg_deleted
              AND (((p.full_name IS NULL
                  OR btrim(CAST(p.full_name AS text)) = ''
                  OR (p_own_tx AND profileguard.written_in_this_transaction(p.xmin)))
                AND CAST(s.pg_c0 AS text) IS NOT NULL
                AND p.full_name IS DISTINCT FROM CAST(s.pg_c0 AS text))
                OR ((p.avatar_url IS NULL
                  OR btrim(CAST(p.avatar_url AS text)) = ''
                  OR (p_own_tx AND profileguard.written_in_this_transaction(p.xmin)))
                AND CAST(s.pg_c1 AS text) IS NOT NULL
                AND p.avatar_url IS DISTINCT FROM CAST(s.pg_c1 AS text)))
            RETURNING p.id
        ), redacted as (
            UPDATE public.profiles AS p
            SET full_name = NULL, avatar_url = NULL
            FROM (SELECT u.id AS pg_key, u.deleted_at IS NOT NULL AS pg_deleted
                  FROM auth.users AS u
                  WHERE u.id = ANY(p_ids)) AS s
            WHERE p.id = s.pg_key
              AND s.pg_deleted
              AND (p.full_name IS NOT NULL OR p.avatar_url IS NOT NULL)
            RETURNING p.id
        )
        select (select count(*) from synced) + (select count(*) from redacted) into v_count;
        return v_count;
    end if;
    with synced as (
        UPDATE public.profiles AS p
        SET full_name = CASE
                          WHEN (p.full_name IS NULL
                             OR btrim(CAST(p.full_name AS text)) = ''
                             OR (p_own_tx AND profileguard.written_in_this_transaction(p.xmin)))
                           AND CAST(s.pg_c0 AS text) IS NOT NULL
                            THEN CAST(s.pg_c0 AS text)
                          ELSE p.full_name
                        END,
            avatar_url = CASE
                           WHEN (p.avatar_url IS NULL
                              OR btrim(CAST(p.avatar_url AS text)) = ''
                              OR (p_own_tx AND profileguard.written_in_this_transaction(p.xmin)))
                            AND CAST(s.pg_c1 AS text) IS NOT NULL
                             THEN CAST(s.pg_c1 AS text)
                           ELSE p.avatar_url
                         END
        FROM (SELECT u.id AS pg_key,
                     COALESCE(NULLIF(btrim(u.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                     ''),
                              NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                              NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')) AS pg_c0,
                     COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'avatar_url'), ''),
                              NULLIF(btrim(u.raw_user_meta_data ->> 'picture'), '')) AS pg_c1,
                     u.deleted_at IS NOT NULL AS pg_deleted
              FROM auth.users AS u
              WHERE u.id = ANY(p_ids)) AS s
        WHERE p.id = s.pg_key
          AND NOT s.pg_deleted
          AND (((p.full_name IS NULL
              OR btrim(CAST(p.full_name AS text)) = ''
              OR (p_own_tx AND profileguard.written_in_this_transaction(p.xmin)))
            AND CAST(s.pg_c0 AS text) IS NOT NULL
            AND p.full_name IS DISTINCT FROM CAST(s.pg_c0 AS text))
            OR ((p.avatar_url IS NULL
              OR btrim(CAST(p.avatar_url AS text)) = ''
              OR (p_own_tx AND profileguard.written_in_this_transaction(p.xmin)))
            AND CAST(s.pg_c1 AS text) IS NOT NULL
            AND p.avatar_url IS DISTINCT FROM CAST(s.pg_c1 AS text)))
        RETURNING p.id
    ), redacted as (
        UPDATE public.profiles AS p
        SET full_name = NULL, avatar_url = NULL
        FROM (SELECT u.id AS pg_key, u.deleted_at IS NOT NULL AS pg_deleted
              FROM auth.users AS u
              WHERE u.id = ANY(p_ids)) AS s
        WHERE p.id = s.pg_key
          AND s.pg_deleted
          AND (p.full_name IS NOT NULL OR p.avatar_url IS NOT NULL)
        RETURNING p.id
    ), done as (
        select * from synced union all select * from redacted
    ), recorded as (
        insert into profileguard.events (kind, source, user_id)
        select 'repair', p_source, d."id"::text from done d
    )
    select count(*) into v_count from done;
    return v_count;
end
$pg$;

-- The row trigger's function: never called. The row trigger's WHEN clause (at the end of this
-- file) appends the key of a user whose watched source or deletion state changed to a
-- transaction-local setting, profileguard.sync, and is false: WHEN is evaluated as each row is
-- updated, so the statement trigger finds the queue filled, and an update pays for neither a
-- function call nor an event per row. The clause uses built-in functions only (set_config and
-- current_setting, which every role that may update users can execute; its operators are bound
-- when the trigger is created) and is short, as it is prepared again for every UPDATE statement:
-- it reads and writes no table, takes no lock and cannot fail a login. Past 74000
-- characters (about 2,000 keys; appending copies the queue) the queue becomes '*': the
-- statement trigger then brings every profile in step in one set-based pass.
create or replace function profileguard.on_identity_update_row()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
begin
    return null;
end
$pg$;

-- The statement trigger: drains the queue set-based, in one exception block per statement (never
-- per row), with the signup trigger's design: no JIT, index lookups only, a bounded wait per
-- lock; on error one failure row per queued user (source 'sync'), a notification, and the update
-- (a login) commits — unless strict mode is on. The worker repairs what was recorded.
create or replace function profileguard.on_identity_update()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
set enable_seqscan = off
set lock_timeout = '62ms'
as $pg$
declare
    v_queue text := coalesce(pg_catalog.current_setting('profileguard.sync', true), '');
    v_ids uuid[];
    v_strict boolean := false;
    v_state text;
    v_message text;
    v_detail text;
    v_schema text;
    v_table text;
    v_column text;
    v_constraint text;
    v_datatype text;
    v_count bigint;
begin
    if v_queue = '' then
        return null;
    end if;
    perform pg_catalog.set_config('profileguard.sync', '', true);
    begin
        if v_queue <> '*' then
            v_ids := ('{' || pg_catalog.ltrim(v_queue, ',') || '}')::text[]::uuid[];
        end if;
        if not profileguard.trigger_enabled() then
            return null;
        end if;
        perform profileguard.sync_profiles(v_ids, 'trigger', true);
        return null;
    exception when others or query_canceled or assert_failure then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                                v_detail = pg_exception_detail, v_schema = schema_name,
                                v_table = table_name, v_column = column_name,
                                v_constraint = constraint_name, v_datatype = pg_datatype_name;
        if v_state = '57014' and not profileguard.statement_timed_out(v_message) then
            raise;
        end if;
    end;
    -- The failure path, protected too (see on_identity_insert).
    begin
        v_strict := profileguard.strict_mode();  -- read here: only a failure needs it
        perform pg_catalog.set_config('lock_timeout', '50ms', true);
        if coalesce(v_strict, false) then
            raise exception using errcode = v_state, message = v_message,
                detail = coalesce(v_detail, ''),
                hint = 'profileguard strict mode is on; "profileguard install" without --strict '
                       'lets updates commit and records the failure';
        end if;
        -- One failure row per queued user; after an overflow one without a user: the worker
        -- then runs a full drift pass.
        insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
        select 'failure', 'sync', x::text, v_state,
               profileguard.sqlstate_category(v_state), left(v_message, 2000),
               profileguard.error_fields(v_schema, v_table, v_column, v_constraint, v_datatype,
                                         v_detail)
        from unnest(coalesce(v_ids::text[], array[null::text])) x;
        get diagnostics v_count = row_count;
        perform pg_notify('profileguard',
            json_build_object('event', 'failure', 'source', 'sync', 'count', v_count,
                              'sqlstate', v_state)::text);
    exception when others or query_canceled or assert_failure then
        if coalesce(v_strict, false)
           or (sqlstate = '57014' and not profileguard.statement_timed_out(sqlerrm)) then
            raise;
        end if;
        -- Not recorded (the events table locked too): the notification names the users when they
        -- fit in one (a worker brings them in step within seconds), else tells workers to look
        -- for drift. It is sent at commit, whatever is locked.
        begin
            perform pg_notify('profileguard', json_build_object(
                'event', 'failure', 'source', 'sync', 'recorded', false,
                'sqlstate', coalesce(v_state, sqlstate),
                'ids', case when pg_catalog.octet_length(v_ids::text) <= 6500
                            then pg_catalog.to_json(v_ids::text[]) end)::text);
        exception when others then
            null;
        end;
    end;
    return null;
end
$pg$;

-- Profiles that disagree with their users, for the worker and `profileguard drift`: with `p_ids`
-- those users; otherwise up to `p_scan` users after `p_after` in key order (a bounded step of a
-- full pass). Returns a JSON object: scanned, last (the key reached), drift (a list of user_id
-- and columns); 'redact' in columns is a soft-deleted user whose profile still holds redacted values.
create or replace function profileguard.find_drift(
    p_ids uuid[] default null, p_after uuid default null, p_scan integer default 10000
)
returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
set jit = off
as $pg$
declare
    v_scanned bigint;
    v_last uuid;
    v_drift jsonb;
begin
    if p_ids is not null then
        v_scanned := cardinality(p_ids);
        select coalesce(jsonb_agg(jsonb_build_object('user_id', d.pg_key, 'columns', d.pg_columns)
                                  order by d.pg_key), '[]'::jsonb)
          into v_drift
          from (
              SELECT d.pg_key, d.pg_columns
              FROM (SELECT s.pg_key,
                           array_remove(CAST(ARRAY[CASE
                                                     WHEN NOT s.pg_deleted
                                                      AND ((p.full_name IS NULL
                                                         OR btrim(CAST(p.full_name AS text)) = ''
                                                         OR FALSE)
                                                       AND CAST(s.pg_c0 AS text) IS NOT NULL
                                                       AND p.full_name IS DISTINCT FROM CAST(s.pg_c0 AS text))
                                                       THEN 'full_name'
                                                   END,
                                                   CASE
                                                     WHEN NOT s.pg_deleted
                                                      AND ((p.avatar_url IS NULL
                                                         OR btrim(CAST(p.avatar_url AS text)) = ''
                                                         OR FALSE)
                                                       AND CAST(s.pg_c1 AS text) IS NOT NULL
                                                       AND p.avatar_url IS DISTINCT FROM CAST(s.pg_c1 AS text))
                                                       THEN 'avatar_url'
                                                   END,
                                                   CASE
                                                     WHEN s.pg_deleted
                                                      AND (p.full_name IS NOT NULL
                                                        OR p.avatar_url IS NOT NULL)
                                                       THEN 'redact'
                                                   END] AS text[]),
                                        NULL) AS pg_columns
                    FROM (SELECT u.id AS pg_key,
                                 COALESCE(NULLIF(btrim(u.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                                 ''),
                                          NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                                          NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')) AS pg_c0,
                                 COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'avatar_url'), ''),
                                          NULLIF(btrim(u.raw_user_meta_data ->> 'picture'), '')) AS pg_c1,
                                 u.deleted_at IS NOT NULL AS pg_deleted
                          FROM auth.users AS u
                          WHERE u.id = ANY(p_ids)) AS s
                         INNER JOIN public.profiles AS p ON p.id = s.pg_key) AS d
              WHERE cardinality(d.pg_columns) > 0
          ) d;
    else
        select count(*), (array_agg(w.k order by w.k desc))[1] into v_scanned, v_last from (
            select u."id" as k from "auth"."users" u
            where p_after is null or u."id" > p_after
            order by u."id" limit p_scan) w;
        select coalesce(jsonb_agg(jsonb_build_object('user_id', d.pg_key, 'columns', d.pg_columns)
                                  order by d.pg_key), '[]'::jsonb)
          into v_drift
          from (
              SELECT d.pg_key, d.pg_columns
              FROM (SELECT s.pg_key,
                           array_remove(CAST(ARRAY[CASE
                                                     WHEN NOT s.pg_deleted
                                                      AND ((p.full_name IS NULL
                                                         OR btrim(CAST(p.full_name AS text)) = ''
                                                         OR FALSE)
                                                       AND CAST(s.pg_c0 AS text) IS NOT NULL
                                                       AND p.full_name IS DISTINCT FROM CAST(s.pg_c0 AS text))
                                                       THEN 'full_name'
                                                   END,
                                                   CASE
                                                     WHEN NOT s.pg_deleted
                                                      AND ((p.avatar_url IS NULL
                                                         OR btrim(CAST(p.avatar_url AS text)) = ''
                                                         OR FALSE)
                                                       AND CAST(s.pg_c1 AS text) IS NOT NULL
                                                       AND p.avatar_url IS DISTINCT FROM CAST(s.pg_c1 AS text))
                                                       THEN 'avatar_url'
                                                   END,
                                                   CASE
                                                     WHEN s.pg_deleted
                                                      AND (p.full_name IS NOT NULL
                                                        OR p.avatar_url IS NOT NULL)
                                                       THEN 'redact'
                                                   END] AS text[]),
                                        NULL) AS pg_columns
                    FROM (SELECT u.id AS pg_key,
                                 COALESCE(NULLIF(btrim(u.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                                 ''),
                                          NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                                          NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')) AS pg_c0,
                                 COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'avatar_url'), ''),
                                          NULLIF(btrim(u.raw_user_meta_data ->> 'picture'), '')) AS pg_c1,
                                 u.deleted_at IS NOT NULL AS pg_deleted
                          FROM auth.users AS u
                          WHERE (p_after IS NULL OR u.id > p_after) AND u.id <= v_last) AS s
                         INNER JOIN public.profiles AS p ON p.id = s.pg_key) AS d
              WHERE cardinality(d.pg_columns) > 0
          ) d;
    end if;
    return jsonb_build_object('scanned', v_scanned, 'last', v_last, 'drift', v_drift);
end
$pg$;

-- Observability: cheap figures at any table size, the full recount, the verdict.
--
-- A full recount (`refresh_stats()`, run periodically by `profileguard serve` or on demand) counts
-- users, finds every user without a profile (kept in `missing_profiles`) and folds the audit trail
-- into `event_totals` up to a horizon no open transaction can still write before. Between recounts
-- `stats()` adds only what happened since: identity inserts/deletes from the statistics collector,
-- failure events after the horizon, and a re-check of the known missing users by primary key.
-- Nothing here runs on the signup path. Nothing is granted to anyone (see privileges.sql).
--
-- Limits, by design: between recounts `users` follows the statistics collector, which publishes a
-- session's inserts within about a second (idle sessions up to ~10 s later), so it can be off by
-- the signups of the last seconds until the next recount (`users_exact` says whether it moved).
-- The horizon waits for the oldest open transaction in this database that the owner can see in
-- pg_stat_activity (superuser or pg_read_all_stats); a session idle in a transaction for hours
-- keeps later events in the cheap-read part, which then grows with the audit trail.

-- The installed identity/profile tables (from profileguard.settings), resolved in the catalog.
create or replace function profileguard._monitored_tables(
    out identity regclass,
    out identity_key text,
    out key_type text,
    out key_pattern text,
    out profile regclass,
    out profile_key text,
    out has_created_at boolean
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_settings record;
begin
    select s.identity_table, s.identity_key, s.profile_table, s.profile_key
      into v_settings from profileguard.settings s;
    if not found then
        raise exception using errcode = '55000', message = 'profileguard: not configured',
            hint = 'run: profileguard install';
    end if;
    identity := to_regclass(format('%I.%I', split_part(v_settings.identity_table, '.', 1),
                                   split_part(v_settings.identity_table, '.', 2)));
    profile := to_regclass(format('%I.%I', split_part(v_settings.profile_table, '.', 1),
                                  split_part(v_settings.profile_table, '.', 2)));
    if identity is null or profile is null then
        raise exception using errcode = '42P01',
            message = format('profileguard: table %s or %s does not exist',
                             v_settings.identity_table, v_settings.profile_table),
            hint = 'run: profileguard install (or fix identity.table / profile.table)';
    end if;
    identity_key := v_settings.identity_key;
    profile_key := v_settings.profile_key;
    select pg_catalog.format_type(a.atttypid, a.atttypmod) into key_type
    from pg_catalog.pg_attribute a
    where a.attrelid = identity and a.attname = identity_key and not a.attisdropped;
    -- Ids in the audit trail are text; only those that can be a key are cast (never an error).
    key_pattern := case
        when key_type = 'uuid' then
            '^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$'
        when key_type in ('smallint', 'integer', 'bigint') then '^-?[0-9]{1,18}$'
        else '^.*$'
    end;
    has_created_at := exists (
        select from pg_catalog.pg_attribute a
        where a.attrelid = identity and a.attname = 'created_at' and not a.attisdropped
          and a.atttypid in ('timestamptz'::regtype, 'timestamp'::regtype));
end
$pg$;

-- The full recount: exact counts, the set of users without a profile, audit totals up to a safe
-- horizon. Costs a scan of the identity table; run it every few minutes, not per scrape.
-- Returns false when another session is recounting right now.
create or replace function profileguard._recount()
returns boolean
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    t record;
    v_started timestamptz := clock_timestamp();
    v_horizon timestamptz;
    v_old_horizon timestamptz;
    v_users bigint;
    v_inserted bigint;
    v_deleted bigint;
    v_first_seen text;
begin
    if not pg_try_advisory_xact_lock(hashtext('profileguard.refresh_stats')) then
        return false;
    end if;
    t := profileguard._monitored_tables();
    -- First: no transaction that is still open can add an event created before the horizon,
    -- because an event's created_at is its transaction's start.
    select least(now(), min(a.xact_start)) into v_horizon
    from pg_catalog.pg_stat_activity a
    where a.datname = pg_catalog.current_database() and a.xact_start is not null
      and a.pid <> pg_catalog.pg_backend_pid();
    v_horizon := coalesce(v_horizon, now());
    v_inserted := pg_catalog.pg_stat_get_tuples_inserted(t.identity);
    v_deleted := pg_catalog.pg_stat_get_tuples_deleted(t.identity);

    execute format('select count(*) from %s', t.identity) into v_users;

    v_first_seen := case when t.has_created_at
        then 'least(coalesce(u.created_at::timestamptz, now()), now())' else 'now()' end;
    -- One statement: the users without a profile now replace the set known before (the delete
    -- and the upsert touch disjoint rows).
    execute format(
        'with now_missing as materialized ('
        '    select u.%1$I::text as user_id, %4$s as first_seen_at from %2$s u'
        '    where not exists (select from %3$s p where p.%5$I = u.%1$I)),'
        ' gone as (delete from profileguard.missing_profiles m'
        '    where not exists (select from now_missing n where n.user_id = m.user_id))'
        ' insert into profileguard.missing_profiles as m (user_id, first_seen_at, seen_at)'
        ' select n.user_id, n.first_seen_at, now() from now_missing n'
        ' on conflict (user_id) do update'
        '    set seen_at = now(), first_seen_at = least(m.first_seen_at, excluded.first_seen_at)',
        t.identity_key, t.identity, t.profile, v_first_seen, t.profile_key);

    select c.events_horizon into v_old_horizon from profileguard.counters c for update;
    if v_horizon > v_old_horizon then
        insert into profileguard.event_totals as e (kind, source, category, total)
        select ev.kind, ev.source, coalesce(ev.category, ''), count(*)
        from profileguard.events ev
        where ev.created_at >= v_old_horizon and ev.created_at < v_horizon
        group by 1, 2, 3
        on conflict (kind, source, category) do update set total = e.total + excluded.total;
    else
        v_horizon := v_old_horizon;
    end if;

    update profileguard.counters set
        refreshed_at = now(),
        refresh_ms = extract(epoch from clock_timestamp() - v_started) * 1000,
        users = v_users,
        missing = (select count(*) from profileguard.missing_profiles),
        oldest_missing_at = (select min(first_seen_at) from profileguard.missing_profiles),
        identity_oid = t.identity,
        inserted_at_refresh = v_inserted,
        deleted_at_refresh = v_deleted,
        events_horizon = v_horizon;
    return true;
end
$pg$;

-- The full recount keeps what the checks and earlier recounts knew: a user's first_seen_at never
-- moves back to its created_at (an import's rows carry old ones), and a user the recount finds
-- that the last one did not became missing after it ran.
create or replace function profileguard.refresh_stats()
returns boolean
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_previous timestamptz := (select c.refreshed_at from profileguard.counters c);
    v_known_ids text[];
    v_known_seen timestamptz[];
begin
    if not pg_try_advisory_xact_lock(hashtext('profileguard.refresh_stats')) then
        return false;
    end if;
    select coalesce(array_agg(m.user_id), '{}'::text[]),
           coalesce(array_agg(m.first_seen_at), '{}'::timestamptz[])
    into v_known_ids, v_known_seen
    from profileguard.missing_profiles m;
    perform profileguard._recount();
    update profileguard.missing_profiles m
    set first_seen_at = coalesce(k.first_seen_at, greatest(m.first_seen_at, v_previous))
    from (select m2.user_id from profileguard.missing_profiles m2) a
    left join unnest(v_known_ids, v_known_seen) as k(user_id, first_seen_at) on k.user_id = a.user_id
    where a.user_id = m.user_id
      and m.first_seen_at is distinct from
          coalesce(k.first_seen_at, greatest(m.first_seen_at, v_previous));
    update profileguard.counters set
        oldest_missing_at = (select min(m.first_seen_at) from profileguard.missing_profiles m);
    return true;
end
$pg$;

-- How many users of missing_profiles still lack a profile (key probes; the caller bounds the set).
create or replace function profileguard._known_missing()
returns bigint
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
set enable_hashjoin = off
set enable_mergejoin = off
as $pg$
declare
    t record := profileguard._monitored_tables();
    v_known bigint;
begin
    execute format(
        'select count(*) from profileguard.missing_profiles m'
        ' where exists (select from %1$s u where u.%2$I = m.user_id::%5$s)'
        '   and not exists (select from %3$s p where p.%4$I = m.user_id::%5$s)',
        t.identity, t.identity_key, t.profile, t.profile_key, t.key_type)
    into v_known;
    return v_known;
end
$pg$;

-- Every figure an operator looks at, as one JSON document; cheap at any table size (see the top
-- of this file). `p_window` bounds the rates; a worker counts as live when its heartbeat is
-- younger than `p_heartbeat_max_age` and it has not reported 'stopped'.
create or replace function profileguard._figures(
    p_window interval default '1 hour',
    p_heartbeat_max_age interval default '2 minutes',
    p_backfill_stall interval default '10 minutes'
)
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    t record;
    c record;
    s record;
    v_enabled boolean;
    v_strict boolean;
    v_trigger boolean;
    v_inserted bigint;
    v_deleted bigint;
    v_users bigint;
    v_users_exact boolean := true;
    v_missing bigint;
    v_missing_exact boolean := true;
    v_oldest timestamptz;
    v_oldest_repairable timestamptz;
    v_window_start timestamptz;
    v_signups bigint;
    v_trigger_failures bigint;
    v_failures_window jsonb;
    v_totals jsonb;
    v_repairs_window bigint;
    v_quarantined bigint;
    v_retrying bigint;
    v_workers jsonb;
    v_backfill jsonb;
    v_failures_total bigint;
    v_repairs_total bigint;
    v_rate double precision;
begin
    select st.enabled, st.strict into v_enabled, v_strict from profileguard.settings st;
    select * into c from profileguard.counters;
    if c.refreshed_at is null then
        perform profileguard.refresh_stats();
        select * into c from profileguard.counters;
    end if;
    t := profileguard._monitored_tables();
    v_trigger := exists (
        select from pg_catalog.pg_trigger g
        where g.tgrelid = t.identity and g.tgname = 'profileguard_after_insert'
          and g.tgenabled <> 'D');

    -- Users: the last recount, plus inserts minus deletes counted by the statistics collector since.
    v_inserted := pg_catalog.pg_stat_get_tuples_inserted(t.identity);
    v_deleted := pg_catalog.pg_stat_get_tuples_deleted(t.identity);
    if c.identity_oid is distinct from t.identity::oid or v_inserted < c.inserted_at_refresh
       or v_deleted < c.deleted_at_refresh then
        v_users := c.users;  -- statistics were reset or the table replaced: wait for a recount
        v_users_exact := false;
    else
        v_users := greatest(0, c.users + (v_inserted - c.inserted_at_refresh)
                                       - (v_deleted - c.deleted_at_refresh));
        v_users_exact := v_inserted = c.inserted_at_refresh and v_deleted = c.deleted_at_refresh;
    end if;

    -- Missing: the known missing users still without a profile (primary-key probes), plus users
    -- named by failure events after the recount's horizon. A very large known set is not probed.
    -- Ids in missing_profiles came from the identity key, so they cast; event ids are checked.
    execute format(
        'select count(*), min(c.first_seen_at),'
        '  min(c.first_seen_at) filter (where not exists (select from profileguard.repair_state r'
        '   where r.user_id = c.k::text and r.quarantined_at is not null)) from ('
        '  select s.k, min(s.first_seen_at) as first_seen_at from ('
        '    select m.user_id::%1$s as k, m.first_seen_at from profileguard.missing_profiles m'
        '     where $2'
        '    union all'
        '    select case when e.user_id ~ %2$L then e.user_id::%1$s end, e.created_at'
        '     from profileguard.events e'
        '     where e.kind = ''failure'' and e.created_at >= $1 and e.user_id is not null'
        '  ) s where s.k is not null group by s.k'
        ') c'
        ' where exists (select from %3$s u where u.%4$I = c.k)'
        '   and not exists (select from %5$s p where p.%6$I = c.k)',
        t.key_type, t.key_pattern, t.identity, t.identity_key, t.profile, t.profile_key)
    into v_missing, v_oldest, v_oldest_repairable
    using c.events_horizon, c.missing <= 5000;
    if c.missing > 5000 then
        v_missing := v_missing + c.missing;
        v_oldest := least(v_oldest, c.oldest_missing_at);
        v_oldest_repairable := least(v_oldest_repairable, c.oldest_missing_at);
        v_missing_exact := false;
    end if;
    v_missing := least(v_missing, v_users);

    select count(*) filter (where r.quarantined_at is not null),
           count(*) filter (where r.quarantined_at is null)
      into v_quarantined, v_retrying
    from profileguard.repair_state r;

    -- Audit totals: folded totals plus events after the horizon (an index range scan).
    select coalesce(jsonb_object_agg(x.category, x.total), '{}'::jsonb),
           coalesce(sum(x.total), 0)
      into v_totals, v_failures_total
    from (
        select coalesce(nullif(a.category, ''), 'other') as category, sum(a.total)::bigint as total
        from (
            select et.category, et.total from profileguard.event_totals et
            where et.kind = 'failure'
            union all
            select coalesce(ev.category, ''), count(*) from profileguard.events ev
            where ev.kind = 'failure' and ev.created_at >= c.events_horizon
            group by 1
        ) a group by 1
    ) x;
    select coalesce((select sum(et.total) from profileguard.event_totals et
                     where et.kind = 'repair'), 0)
         + (select count(*) from profileguard.events ev
            where ev.kind = 'repair' and ev.created_at >= c.events_horizon)
      into v_repairs_total;

    -- The window: signups from the sample at or before its start (the oldest one otherwise).
    select sm.taken_at, sm.inserted into s from profileguard.stats_samples sm
    where sm.taken_at <= now() - p_window order by sm.taken_at desc limit 1;
    if not found then
        select sm.taken_at, sm.inserted into s from profileguard.stats_samples sm
        order by sm.taken_at limit 1;
    end if;
    v_window_start := coalesce(s.taken_at, now());
    v_signups := case when s.inserted is not null and v_inserted >= s.inserted
                      then v_inserted - s.inserted end;
    select count(distinct ev.user_id) into v_trigger_failures from profileguard.events ev
    where ev.kind = 'failure' and ev.source = 'trigger' and ev.created_at >= v_window_start;
    select coalesce(jsonb_object_agg(x.category, x.n), '{}'::jsonb) into v_failures_window
    from (select coalesce(ev.category, 'other') as category, count(*) as n
          from profileguard.events ev
          where ev.kind = 'failure' and ev.created_at >= now() - p_window group by 1) x;
    select count(*) into v_repairs_window from profileguard.events ev
    where ev.kind = 'repair' and ev.created_at >= now() - p_window;
    v_rate := case
        when coalesce(v_signups, 0) > 0 then
            greatest(0, 1 - v_trigger_failures::double precision / v_signups) * 100
        when v_trigger_failures > 0 then 0
    end;

    select coalesce(jsonb_agg(jsonb_build_object(
               'worker_id', w.worker_id, 'hostname', w.hostname, 'pid', w.pid,
               'started_at', w.started_at, 'heartbeat_at', w.heartbeat_at,
               'heartbeat_age_seconds', round(extract(epoch from now() - w.heartbeat_at)::numeric, 3),
               'state', coalesce(w.stats ->> 'state', 'unknown'),
               'live', w.heartbeat_at > now() - p_heartbeat_max_age
                       and coalesce(w.stats ->> 'state', '') <> 'stopped',
               'stats', w.stats) order by w.heartbeat_at desc), '[]'::jsonb)
      into v_workers
    from profileguard.workers w;

    -- Backfill progress, when the backfill table exists in this schema version.
    if to_regclass('profileguard.backfill_runs') is not null then
        execute
            'select to_jsonb(b) || jsonb_build_object('
            '  ''progress_pct'', case when b.total_estimate > 0'
            '    then round(least(100, 100.0 * b.scanned / b.total_estimate), 2) end,'
            '  ''update_age_seconds'','
            '    round(extract(epoch from now() - b.updated_at)::numeric, 3),'
            '  ''stalled'', b.state = ''running'' and b.updated_at < now() - $1)'
            ' from profileguard.backfill_runs b order by b.started_at desc, b.id desc limit 1'
        into v_backfill using p_backfill_stall;
    end if;

    -- At most one sample per 10 seconds; samples older than 8 days are dropped.
    if not exists (select from profileguard.stats_samples sm
                   where sm.taken_at > now() - interval '10 seconds') then
        insert into profileguard.stats_samples
            (taken_at, inserted, deleted, users, missing, quarantined, failures, repairs)
        values (now(), v_inserted, v_deleted, v_users, v_missing, v_quarantined,
                v_failures_total, v_repairs_total)
        on conflict (taken_at) do nothing;
        delete from profileguard.stats_samples sm where sm.taken_at < now() - interval '8 days';
    end if;

    return jsonb_build_object(
        'generated_at', now(),
        'window_seconds', extract(epoch from p_window),
        'enabled', coalesce(v_enabled, false),
        'strict', coalesce(v_strict, false),
        'trigger_installed', v_trigger,
        'identity_table', t.identity::text,
        'profile_table', t.profile::text,
        'users', v_users,
        'users_exact', v_users_exact,
        'profiles', v_users - v_missing,
        'missing', v_missing,
        'missing_exact', v_missing_exact,
        'oldest_missing_at', v_oldest,
        'oldest_missing_age_seconds',
            coalesce(round(extract(epoch from now() - v_oldest)::numeric, 3), 0),
        -- How far repairs are behind: the oldest missing profile nobody has given up on.
        'repair_lag_seconds',
            coalesce(round(extract(epoch from now() - v_oldest_repairable)::numeric, 3), 0),
        'coverage_pct', case when v_users > 0
            then round(100.0 * (v_users - v_missing) / v_users, 4) else 100 end,
        'counted_at', c.refreshed_at,
        'count_age_seconds', round(extract(epoch from now() - c.refreshed_at)::numeric, 3),
        'refresh_ms', round(c.refresh_ms::numeric, 3),
        'identity_inserts_total', v_inserted,
        'identity_deletes_total', v_deleted,
        'window_start', v_window_start,
        'window_covered_seconds', round(extract(epoch from now() - v_window_start)::numeric, 3),
        'signups_window', v_signups,
        'trigger_failures_window', v_trigger_failures,
        'success_rate_pct', round(v_rate::numeric, 4),
        'failures_window', v_failures_window,
        'failures_total', v_failures_total,
        'failures_by_category_total', v_totals,
        'repairs_window', v_repairs_window,
        'repairs_total', v_repairs_total,
        'quarantined', v_quarantined,
        'retrying', v_retrying,
        'workers', v_workers,
        'live_workers', (select count(*) from jsonb_array_elements(v_workers) w
                         where (w ->> 'live')::boolean),
        'backfill', v_backfill
    );
end
$pg$;

-- The thresholds of the verdict: the [alerts] values that install stored in the settings row
-- (config -> 'alerts', written from profileguard.toml), so that every caller judges alike. A
-- grace or repair SLO given here replaces the stored one (the other thresholds have no override).
create or replace function profileguard._thresholds(
    p_grace interval default null,
    p_slo interval default null
)
returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v jsonb;
begin
    select s.config -> 'alerts' into v from profileguard.settings s;
    if not found then
        raise exception using errcode = '55000', message = 'profileguard: not configured',
            hint = 'run: profileguard install';
    end if;
    if v is null or jsonb_typeof(v) <> 'object' or not v ?& array[
        'missing_grace_seconds', 'repair_slo_seconds', 'success_rate_min_pct',
        'success_rate_window_seconds', 'success_rate_min_signups', 'quarantine_threshold',
        'worker_required', 'worker_heartbeat_max_age_seconds', 'backfill_stall_seconds'
    ] then
        raise exception using errcode = '55000',
            message = 'profileguard: the installed settings hold no [alerts] thresholds',
            hint = 'run: profileguard upgrade (it stores those of profileguard.toml)';
    end if;
    if p_grace < interval '0' or p_slo < interval '0' then
        raise exception using errcode = '22023',
            message = format('profileguard: a grace or repair SLO below zero (%s, %s)', p_grace, p_slo),
            hint = 'give intervals of zero or more, or null for the installed ones';
    end if;
    if p_grace is not null then
        v := v || jsonb_build_object('missing_grace_seconds', extract(epoch from p_grace));
    end if;
    if p_slo is not null then
        v := v || jsonb_build_object('repair_slo_seconds', extract(epoch from p_slo));
    end if;
    return v;
end
$pg$;

-- Every figure: stats() runs the check of the invariant first. The window, the workers'
-- heartbeat age and the backfill's stall time are the installed thresholds unless given.
create or replace function profileguard.stats(
    p_window interval default null,
    p_heartbeat_max_age interval default null,
    p_backfill_stall interval default null,
    p_check_interval interval default '2 seconds'
)
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v jsonb;
    i record;
    d record;
    th jsonb;
    v_known bigint := 0;
    v_missing bigint;
    v_users bigint;
    v_drift_pending bigint;
    v_drift_oldest timestamptz;
begin
    if p_window is null or p_heartbeat_max_age is null or p_backfill_stall is null then
        th := profileguard._thresholds();
    end if;
    if (select c.refreshed_at is null from profileguard.counters c) then
        perform profileguard.refresh_stats();
    end if;
    perform profileguard.check_invariant(p_check_interval);
    v := profileguard._figures(
        coalesce(p_window, make_interval(secs => (th ->> 'success_rate_window_seconds')::float8)),
        coalesce(p_heartbeat_max_age,
                 make_interval(secs => (th ->> 'worker_heartbeat_max_age_seconds')::float8)),
        coalesce(p_backfill_stall, make_interval(secs => (th ->> 'backfill_stall_seconds')::float8)));
    select * into i from profileguard.invariant_scan;
    -- The users figure follows the statistics collector, which publishes an open session's
    -- inserts late: the missing users the check found count even before it does.
    if (select c.missing <= 5000 from profileguard.counters c) then
        v_known := profileguard._known_missing();
    end if;
    v_missing := greatest((v ->> 'missing')::bigint, v_known);
    v_users := greatest((v ->> 'users')::bigint, v_missing);
    -- Drift: profiles out of step that the worker could not bring back yet, and what its last
    -- complete full pass found.
    select count(*), min(ds.first_seen_at) into v_drift_pending, v_drift_oldest
    from profileguard.drift_state ds;
    select dp.completed_at, dp.completed_found, dp.completed_scanned into d
    from profileguard.drift_pass dp;
    return v || jsonb_build_object(
        'users', v_users,
        'users_exact', (v ->> 'users_exact')::boolean and v_users = (v ->> 'users')::bigint,
        'missing', v_missing,
        'profiles', v_users - v_missing,
        'coverage_pct', case when v_users > 0
            then round(100.0 * (v_users - v_missing) / v_users, 4) else 100 end,
        'invariant_checked_at', i.checked_at,
        'invariant_check_age_seconds',
            round(extract(epoch from now() - i.checked_at)::numeric, 3),
        'invariant_check_ms', round(i.check_ms::numeric, 3),
        'invariant_check_mode', i.last_mode,
        'invariant_scanned', i.last_scanned,
        'invariant_found_total', i.found_total,
        'drift_pending', v_drift_pending,
        'drift_oldest_pending_at', v_drift_oldest,
        'drift_full_pass_at', d.completed_at,
        'drift_full_pass_found', d.completed_found,
        'drift_full_pass_scanned', d.completed_scanned,
        'sync_failures_hour', (select count(*) from profileguard.events e
                               where e.kind = 'failure' and e.source = 'sync'
                                 and e.created_at > now() - interval '1 hour'),
        'mapping_stale', (select c.mapping_stale from profileguard.catalog_seen c));
end
$pg$;

-- An age or duration in its two largest units, for the checks' messages: 45s, 3m 20s, 2h 3m, 41d 9h
-- (the figures keep seconds).
create or replace function profileguard._duration(p_seconds double precision)
returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $pg$
    select case
        when d > 0 then d || 'd' || case when h > 0 then format(' %sh', h) else '' end
        when h > 0 then h || 'h' || case when m > 0 then format(' %sm', m) else '' end
        when m > 0 then m || 'm' || case when s > 0 then format(' %ss', s) else '' end
        else s || 's'
    end
    from (select n / 86400 as d, n % 86400 / 3600 as h, n % 3600 / 60 as m, n % 60 as s
          from (select greatest(round(coalesce(p_seconds, 0)), 0)::bigint as n) as total) as units
$pg$;

-- One check of the verdict, as health() lists it: `status` is 'ok' or, while it holds, its
-- severity; `verdict` is what it makes the verdict while it holds (null: a warning only).
create or replace function profileguard._check(
    p_name text,
    p_severity text,
    p_verdict text,
    p_active boolean,
    p_value double precision,
    p_threshold double precision,
    p_message text
)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $pg$
    select jsonb_build_object(
        'name', p_name, 'status', case when p_active then p_severity else 'ok' end,
        'severity', p_severity, 'verdict', p_verdict, 'active', p_active,
        'value', p_value, 'threshold', p_threshold, 'message', p_message)
$pg$;

-- The checks of the verdict, in order, from the figures (stats()) and the thresholds
-- (_thresholds()). Every view shows these: status, /metrics, the dashboard, the alert rules.
create or replace function profileguard._checks(p_figures jsonb, p_thresholds jsonb)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v jsonb := p_figures;
    th jsonb := p_thresholds;
    v_missing bigint := coalesce((v ->> 'missing')::bigint, 0);
    v_age double precision := case when v_missing > 0
        then coalesce((v ->> 'oldest_missing_age_seconds')::float8, 0) else 0 end;
    v_grace double precision := (th ->> 'missing_grace_seconds')::float8;
    v_slo double precision := (th ->> 'repair_slo_seconds')::float8;
    v_enabled boolean := coalesce((v ->> 'enabled')::boolean, false);
    v_trigger boolean := coalesce((v ->> 'trigger_installed')::boolean, false);
    v_rate double precision := (v ->> 'success_rate_pct')::float8;
    v_signups bigint := coalesce((v ->> 'signups_window')::bigint, 0);
    v_failures bigint := coalesce((v ->> 'trigger_failures_window')::bigint, 0);
    v_covered double precision := coalesce((v ->> 'window_covered_seconds')::float8, 0);
    v_min_pct double precision := (th ->> 'success_rate_min_pct')::float8;
    v_min_signups bigint := (th ->> 'success_rate_min_signups')::numeric::bigint;
    v_quarantined bigint := coalesce((v ->> 'quarantined')::bigint, 0);
    v_quarantine_max bigint := (th ->> 'quarantine_threshold')::numeric::bigint;
    v_live bigint := coalesce((v ->> 'live_workers')::bigint, 0);
    v_registered bigint := coalesce(jsonb_array_length(v -> 'workers'), 0);
    v_required boolean := (th ->> 'worker_required')::boolean;
    v_heartbeat double precision := (th ->> 'worker_heartbeat_max_age_seconds')::float8;
    v_stalled boolean := coalesce((v -> 'backfill' ->> 'stalled')::boolean, false);
    v_backfill_age double precision := (v -> 'backfill' ->> 'update_age_seconds')::float8;
    v_stall double precision := (th ->> 'backfill_stall_seconds')::float8;
    v_drift bigint := coalesce((v ->> 'drift_pending')::bigint, 0);
    v_stale text := v ->> 'mapping_stale';
    v_table text := v ->> 'identity_table';
    v_lag double precision := case when v_missing > 0
        then coalesce((v ->> 'repair_lag_seconds')::float8, 0) else 0 end;
    -- More users without a profile than failures ever recorded: some never failed, a backlog from
    -- before the trigger (or from while it was off), which the backfill creates.
    v_backlog boolean := v_missing > coalesce((v ->> 'failures_total')::bigint, 0);
begin
    return jsonb_build_array(
        profileguard._check('enabled', 'critical', 'unhealthy', not v_enabled,
            case when v_enabled then 1 else 0 end, 1,
            case when v_enabled then 'the trigger is enabled'
                 else 'profileguard is disabled; run: profileguard enable' end),
        profileguard._check('trigger', 'critical', 'unhealthy', not v_trigger,
            case when v_trigger then 1 else 0 end, 1,
            case when v_trigger then format('trigger present on %s', v_table)
                 else format('the signup trigger on %s is missing or disabled;'
                             ' run: profileguard install', v_table) end),
        profileguard._check('repair_slo', 'critical', 'unhealthy', v_missing > 0 and v_age > v_slo,
            v_age, v_slo,
            case when v_missing > 0 and v_age > v_slo
                then format('a user has had no profile for %s, beyond the repair SLO of %s; ',
                            profileguard._duration(v_age), profileguard._duration(v_slo))
                    || case when v_backlog
                        then 'a backlog from before the trigger; run: profileguard backfill'
                        when v_lag <= v_slo
                        then 'quarantined users wait on their own data; once it is fixed, run:'
                             ' profileguard retry --all-quarantined'
                        else 'check that a worker is running: profileguard worker'
                    end
                else format('no user has waited longer than the repair SLO of %s',
                            profileguard._duration(v_slo))
            end),
        profileguard._check('missing_profiles', 'warning', 'degraded',
            v_missing > 0 and v_age > v_grace, v_age, v_grace,
            case when v_missing = 0 then 'every user has a profile'
                else format('%s users have no profile, the oldest for %s ', v_missing,
                            profileguard._duration(v_age))
                    || case when v_age <= v_grace
                        then format('(within the grace of %s)', profileguard._duration(v_grace))
                        else format('(grace %s); ', profileguard._duration(v_grace))
                            || case when v_backlog
                                then 'more than ever failed: a backlog from before the trigger;'
                                     ' run: profileguard backfill'
                                else 'repair them: profileguard worker'
                            end
                    end
            end),
        profileguard._check('success_rate', 'warning', null,
            v_rate is not null and greatest(v_signups, v_failures) >= v_min_signups
                and v_rate < v_min_pct,
            v_rate, v_min_pct,
            case when v_rate is null
                then format('no signups in the last %s', profileguard._duration(v_covered))
                else format('trigger success rate %s%% over the last %s (%s failures in %s signups;'
                            ' minimum %s%% from %s signups); the worker repairs what it misses',
                            round(v_rate::numeric, 2), profileguard._duration(v_covered), v_failures,
                            v_signups, v_min_pct, v_min_signups)
            end),
        profileguard._check('quarantine', 'warning', null, v_quarantined > v_quarantine_max,
            v_quarantined, v_quarantine_max,
            case when v_quarantined = 0 then 'nobody is quarantined'
                else format('%s quarantined users (threshold %s); fix the cause, then run:'
                            ' profileguard retry --all-quarantined', v_quarantined, v_quarantine_max)
            end),
        profileguard._check('no_live_worker', 'warning', null,
            v_live = 0 and (v_required or v_registered > 0), v_live, 1,
            case when v_registered = 0 and not v_required
                then 'no worker registered (alerts.worker_required is off)'
                else format('%s of %s registered workers are live (heartbeat within %s)%s',
                            v_live, v_registered, profileguard._duration(v_heartbeat),
                            case when v_live = 0 then '; start one: profileguard worker' else '' end)
            end),
        profileguard._check('backfill_stalled', 'warning', null, v_stalled, v_backfill_age, v_stall,
            case when v_stalled
                then format('backfill run %s is running but has not progressed for %s'
                            ' (threshold %s)', v -> 'backfill' ->> 'id',
                            profileguard._duration(v_backfill_age), profileguard._duration(v_stall))
                else 'no stalled backfill'
            end),
        profileguard._check('drift', 'warning', null, v_drift > 0, v_drift, 0,
            case when v_drift > 0
                then format('%s profiles are out of step with their users and the worker could not'
                            ' bring them back yet; see: profileguard drift', v_drift)
                else 'profiles are in step with their users'
            end),
        profileguard._check('mapping', 'warning', 'degraded', v_stale is not null,
            case when v_stale is null then 0 else 1 end, 0,
            coalesce(v_stale, 'the functions generated from the mapping match the profile table')));
end
$pg$;

-- The verdict, the one every view shows (`profileguard status`, /metrics, the dashboard, the
-- alert rules) and SQL-only checks read (pg_cron, the SQL editor): healthy while no user has
-- lacked a profile for longer than the grace, or while the functions generated from the mapping
-- no longer match the profile table (a stale mapping), degraded; unhealthy once a user has lacked
-- one for longer than the repair SLO or the trigger is off. The other checks (trigger success rate,
-- quarantine, silent workers, a stalled backfill, drift) are warnings: they do not change it.
-- The thresholds are the installed ones; p_grace and p_slo, when given, replace those two.
create or replace function profileguard.health(
    p_grace interval default null,
    p_slo interval default null
)
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    th jsonb := profileguard._thresholds(p_grace, p_slo);
    v jsonb := profileguard.stats();
    v_checks jsonb := profileguard._checks(v, th);
    v_status text;
begin
    select case max(case c ->> 'verdict' when 'unhealthy' then 2 when 'degraded' then 1 end)
                when 2 then 'unhealthy' when 1 then 'degraded' else 'healthy' end
      into v_status
    from jsonb_array_elements(v_checks) c
    where (c ->> 'active')::boolean;
    return jsonb_build_object(
        'status', v_status,
        'problems', (select coalesce(jsonb_agg(c -> 'message'), '[]'::jsonb)
                     from jsonb_array_elements(v_checks) c
                     where (c ->> 'active')::boolean and c ->> 'verdict' is not null),
        'warnings', (select coalesce(jsonb_agg(c -> 'message'), '[]'::jsonb)
                     from jsonb_array_elements(v_checks) c
                     where (c ->> 'active')::boolean and c ->> 'verdict' is null),
        'checks', v_checks,
        'thresholds', th,
        'users', v -> 'users',
        'missing', v -> 'missing',
        'coverage_pct', v -> 'coverage_pct',
        'oldest_missing_age_seconds', v -> 'oldest_missing_age_seconds',
        'quarantined', v -> 'quarantined',
        'success_rate_pct', v -> 'success_rate_pct',
        'live_workers', v -> 'live_workers',
        'counted_at', v -> 'counted_at',
        'invariant_checked_at', v -> 'invariant_checked_at',
        'generated_at', v -> 'generated_at',
        'stats', v);
end
$pg$;

-- Observability: the full recount, cheap figures at any table size, the verdict. How the figures
-- stay cheap and what they may miss: docs/monitoring.md. None of it runs on the signup path.

-- The installed identity/profile tables (profileguard.settings), resolved in the catalog;
-- key_pattern matches the audit trail's text ids that cast to the key's type.
create or replace function profileguard._monitored_tables(
    out identity regclass, out identity_key text, out key_type text, out key_pattern text,
    out profile regclass, out profile_key text, out has_created_at boolean
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    s record;
begin
    select * into s from profileguard.settings;
    if not found then
        raise exception using errcode = '55000', message = 'profileguard: not configured',
            hint = 'run: profileguard install';
    end if;
    identity := to_regclass(format('%I.%I', split_part(s.identity_table, '.', 1),
                                   split_part(s.identity_table, '.', 2)));
    profile := to_regclass(format('%I.%I', split_part(s.profile_table, '.', 1),
                                  split_part(s.profile_table, '.', 2)));
    if identity is null or profile is null then
        raise exception using errcode = '42P01',
            message = format('profileguard: table %s or %s does not exist', s.identity_table, s.profile_table),
            hint = 'run: profileguard install (or fix identity.table / profile.table)';
    end if;
    identity_key := s.identity_key;
    profile_key := s.profile_key;
    key_type := (select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a
                 where a.attrelid = identity and a.attname = identity_key and not a.attisdropped);
    key_pattern := case
        when key_type = 'uuid' then
            '^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$'
        when key_type in ('smallint', 'integer', 'bigint') then '^-?[0-9]{1,18}$'
        else '^.*$'
    end;
    has_created_at := exists (select from pg_catalog.pg_attribute a
                              where a.attrelid = identity and a.attname = 'created_at' and not a.attisdropped
                                and a.atttypid in ('timestamptz'::regtype, 'timestamp'::regtype));
end
$pg$;

-- The full recount (a scan of the identity table: every few minutes, not per read): exact counts,
-- the users without a profile, the audit trail folded into event_totals up to a horizon no open
-- transaction can still write before. False when another session recounts or checks right now.
create or replace function profileguard.refresh_stats()
returns boolean
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    t record;
    c record;
    v_started timestamptz := clock_timestamp();
    v_horizon timestamptz;
    v_inserted bigint;
    v_deleted bigint;
    v_users bigint;
begin
    if not pg_try_advisory_xact_lock(hashtext('profileguard.refresh_stats')) then
        return false;
    end if;
    t := profileguard._monitored_tables();
    select * into c from profileguard.counters for update;
    -- An event's created_at is its transaction's start: no open transaction writes one before this.
    select greatest(least(now(), min(a.xact_start)), c.events_horizon) into v_horizon
    from pg_catalog.pg_stat_activity a
    where a.datname = pg_catalog.current_database() and a.xact_start is not null
      and a.pid <> pg_catalog.pg_backend_pid();
    v_inserted := pg_catalog.pg_stat_get_tuples_inserted(t.identity);
    v_deleted := pg_catalog.pg_stat_get_tuples_deleted(t.identity);
    execute format('select count(*) from %s', t.identity) into v_users;
    -- The users without a profile now replace those known before. A known user keeps its
    -- first_seen_at; a new one went missing after the last recount (an import's created_at is old).
    execute format(
        'with now_missing as materialized ('
        '    select u.%1$I::text as user_id, greatest(%4$s, $1) as first_seen_at from %2$s u'
        '    where not exists (select from %3$s p where p.%5$I = u.%1$I)),'
        ' gone as (delete from profileguard.missing_profiles m'
        '    where not exists (select from now_missing n where n.user_id = m.user_id))'
        ' insert into profileguard.missing_profiles as m (user_id, first_seen_at, seen_at)'
        ' select n.user_id, n.first_seen_at, now() from now_missing n'
        ' on conflict (user_id) do update set seen_at = now()',
        t.identity_key, t.identity, t.profile,
        case when t.has_created_at then 'least(u.created_at::timestamptz, now())' else 'now()' end,
        t.profile_key)
    using c.refreshed_at;
    insert into profileguard.event_totals as e (kind, source, category, total)
    select ev.kind, ev.source, coalesce(ev.category, ''), count(*) from profileguard.events ev
    where ev.created_at >= c.events_horizon and ev.created_at < v_horizon
    group by 1, 2, 3
    on conflict (kind, source, category) do update set total = e.total + excluded.total;
    update profileguard.counters set
        refreshed_at = now(),
        refresh_ms = extract(epoch from clock_timestamp() - v_started) * 1000,
        users = v_users,
        (missing, oldest_missing_at) =
            (select count(*), min(m.first_seen_at) from profileguard.missing_profiles m),
        identity_oid = t.identity,
        inserted_at_refresh = v_inserted,
        deleted_at_refresh = v_deleted,
        events_horizon = v_horizon;
    return true;
end
$pg$;

-- The thresholds of the verdict: the [alerts] values install stored in the settings row, so that
-- every caller judges alike. p_grace and p_slo, when given, replace those two.
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
    return v || jsonb_strip_nulls(jsonb_build_object('missing_grace_seconds', extract(epoch from p_grace),
                                                     'repair_slo_seconds', extract(epoch from p_slo)));
end
$pg$;

-- Every figure an operator looks at, as one JSON document: the last recount plus what happened
-- since, after a check of the invariant. The window, the workers' heartbeat age and the backfill's
-- stall time are the installed thresholds unless given.
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
    th jsonb := case when p_window is null or p_heartbeat_max_age is null or p_backfill_stall is null
                     then profileguard._thresholds() end;
    v_window interval := coalesce(p_window,
        make_interval(secs => (th ->> 'success_rate_window_seconds')::float8));
    v_heartbeat interval := coalesce(p_heartbeat_max_age,
        make_interval(secs => (th ->> 'worker_heartbeat_max_age_seconds')::float8));
    v_stall interval := coalesce(p_backfill_stall,
        make_interval(secs => (th ->> 'backfill_stall_seconds')::float8));
    t record;
    c record;
    s record;
    au record;
    win record;
    q record;
    i record;
    d record;
    v_inserted bigint;
    v_deleted bigint;
    v_users bigint;
    v_users_exact boolean;
    v_missing bigint;
    v_known bigint;
    v_oldest timestamptz;
    v_oldest_repairable timestamptz;
    v_window_start timestamptz;
    v_signups bigint;
    v_rate double precision;
    v_workers jsonb;
    v_backfill jsonb;
begin
    if (select n.refreshed_at is null from profileguard.counters n) then
        perform profileguard.refresh_stats();
    end if;
    perform profileguard.check_invariant(p_check_interval);
    select * into c from profileguard.counters;
    t := profileguard._monitored_tables();

    -- Users: the last recount, plus inserts minus deletes counted by the statistics collector since.
    v_inserted := pg_catalog.pg_stat_get_tuples_inserted(t.identity);
    v_deleted := pg_catalog.pg_stat_get_tuples_deleted(t.identity);
    -- (After a reset of the statistics or a replaced table, the recount's until the next one.)
    v_users := case when c.identity_oid is not distinct from t.identity::oid and v_inserted >= c.inserted_at_refresh
                         and v_deleted >= c.deleted_at_refresh
        then greatest(0, c.users + (v_inserted - c.inserted_at_refresh) - (v_deleted - c.deleted_at_refresh))
        else c.users end;
    v_users_exact := c.identity_oid is not distinct from t.identity::oid and v_inserted = c.inserted_at_refresh
                     and v_deleted = c.deleted_at_refresh;

    -- Missing: the known missing users (unless too many to probe on every read) and those named by
    -- failure events after the recount's horizon, that exist and still lack a profile (key probes).
    execute format(
        'select count(*), count(*) filter (where c.known), min(c.first_seen_at),'
        '  min(c.first_seen_at) filter (where not exists (select from profileguard.repair_state r'
        '   where r.user_id = c.k::text and r.quarantined_at is not null)) from ('
        '  select s.k, bool_or(s.known) as known, min(s.first_seen_at) as first_seen_at from ('
        '    select m.user_id::%1$s as k, true as known, m.first_seen_at'
        '     from profileguard.missing_profiles m where $2'
        '    union all'
        '    select case when e.user_id ~ %2$L then e.user_id::%1$s end, false, e.created_at'
        '     from profileguard.events e'
        '     where e.kind = ''failure'' and e.created_at >= $1 and e.user_id is not null'
        '  ) s where s.k is not null group by s.k'
        ') c'
        ' where exists (select from %3$s u where u.%4$I = c.k)'
        '   and not exists (select from %5$s p where p.%6$I = c.k)',
        t.key_type, t.key_pattern, t.identity, t.identity_key, t.profile, t.profile_key)
    into v_missing, v_known, v_oldest, v_oldest_repairable
    using c.events_horizon, c.missing <= 5000;
    if c.missing > 5000 then
        v_missing := v_missing + c.missing;
        v_oldest := least(v_oldest, c.oldest_missing_at);
        v_oldest_repairable := least(v_oldest_repairable, c.oldest_missing_at);
    end if;
    -- The collector publishes an open session's inserts late: the known missing users count first.
    v_missing := greatest(least(v_missing, v_users), v_known);
    v_users_exact := v_users_exact and v_users >= v_missing;
    v_users := greatest(v_users, v_missing);

    -- The window starts at the last sample at or before its start (the oldest one otherwise).
    select sm.taken_at, sm.inserted into s from profileguard.stats_samples sm
    where sm.taken_at <= greatest(now() - v_window,
                                  (select min(o.taken_at) from profileguard.stats_samples o))
    order by sm.taken_at desc limit 1;
    v_window_start := coalesce(s.taken_at, now());
    v_signups := case when v_inserted >= s.inserted then v_inserted - s.inserted end;

    -- The audit trail: folded totals plus the events after the horizon (an index range scan).
    select coalesce(jsonb_object_agg(x.category, x.total) filter (where x.kind = 'failure'), '{}') as by_category,
           coalesce(sum(x.total) filter (where x.kind = 'failure'), 0) as failures,
           coalesce(sum(x.total) filter (where x.kind = 'repair'), 0) as repairs
      into au
    from (select a.kind, coalesce(nullif(a.category, ''), 'other') as category, sum(a.total)::bigint as total
          from (select et.kind, et.category, et.total from profileguard.event_totals et
                union all
                select ev.kind, ev.category, 1 from profileguard.events ev where ev.created_at >= c.events_horizon
               ) a
          group by 1, 2) x;
    select count(*) filter (where ev.kind = 'repair' and ev.created_at >= now() - v_window) as repairs,
           count(distinct ev.user_id) filter (where ev.kind = 'failure' and ev.source = 'trigger'
                                                and ev.created_at >= v_window_start) as trigger_failures,
           count(*) filter (where ev.kind = 'failure' and ev.source = 'sync'
                              and ev.created_at > now() - interval '1 hour') as sync_failures
      into win
    from profileguard.events ev
    where ev.created_at >= least(v_window_start, now() - v_window, now() - interval '1 hour');
    v_rate := case when v_signups > 0 then greatest(0, 1 - win.trigger_failures::float8 / v_signups) * 100
                   when win.trigger_failures > 0 then 0 end;
    select count(*) filter (where r.quarantined_at is not null) as quarantined,
           count(*) filter (where r.quarantined_at is null) as retrying
      into q from profileguard.repair_state r;

    select coalesce(jsonb_agg(jsonb_build_object(
               'worker_id', w.worker_id, 'hostname', w.hostname, 'pid', w.pid,
               'started_at', w.started_at, 'heartbeat_at', w.heartbeat_at,
               'heartbeat_age_seconds', round(extract(epoch from now() - w.heartbeat_at)::numeric, 3),
               'state', coalesce(w.stats ->> 'state', 'unknown'),
               'live', w.heartbeat_at > now() - v_heartbeat and coalesce(w.stats ->> 'state', '') <> 'stopped',
               'stats', w.stats) order by w.heartbeat_at desc), '[]')
      into v_workers
    from profileguard.workers w;
    select to_jsonb(b) || jsonb_build_object(
               'progress_pct', case when b.total_estimate > 0
                   then round(least(100, 100.0 * b.scanned / b.total_estimate), 2) end,
               'update_age_seconds', round(extract(epoch from now() - b.updated_at)::numeric, 3),
               'stalled', b.state = 'running' and b.updated_at < now() - v_stall)
      into v_backfill
    from profileguard.backfill_runs b order by b.started_at desc, b.id desc limit 1;
    select * into i from profileguard.invariant_scan;
    select * into d from profileguard.drift_pass;

    -- At most one sample per 10 seconds; samples older than 8 days are dropped.
    if not exists (select from profileguard.stats_samples sm
                   where sm.taken_at > now() - interval '10 seconds') then
        insert into profileguard.stats_samples
            (taken_at, inserted, deleted, users, missing, quarantined, failures, repairs)
        values (now(), v_inserted, v_deleted, v_users, v_missing, q.quarantined, au.failures, au.repairs)
        on conflict (taken_at) do nothing;
        delete from profileguard.stats_samples sm where sm.taken_at < now() - interval '8 days';
    end if;

    return jsonb_build_object(
        'generated_at', now(),
        'window_seconds', extract(epoch from v_window),
        'enabled', coalesce((select st.enabled from profileguard.settings st), false),
        'strict', coalesce((select st.strict from profileguard.settings st), false),
        'trigger_installed', exists (select from pg_catalog.pg_trigger g
                                     where g.tgrelid = t.identity and g.tgname = 'profileguard_after_insert'
                                       and g.tgenabled <> 'D'),
        'identity_table', t.identity::text,
        'profile_table', t.profile::text,
        'users', v_users,
        'users_exact', v_users_exact,
        'profiles', v_users - v_missing,
        'missing', v_missing,
        'missing_exact', c.missing <= 5000,
        'oldest_missing_at', v_oldest,
        'oldest_missing_age_seconds', coalesce(round(extract(epoch from now() - v_oldest)::numeric, 3), 0),
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
        'trigger_failures_window', win.trigger_failures,
        'success_rate_pct', round(v_rate::numeric, 4),
        'failures_window', (select coalesce(jsonb_object_agg(w.category, w.n), '{}') from (
            select coalesce(ev.category, 'other') as category, count(*) as n from profileguard.events ev
            where ev.kind = 'failure' and ev.created_at >= now() - v_window group by 1) w),
        'failures_total', au.failures,
        'failures_by_category_total', au.by_category,
        'repairs_window', win.repairs,
        'repairs_total', au.repairs,
        'quarantined', q.quarantined,
        'retrying', q.retrying,
        'workers', v_workers,
        'live_workers', (select count(*) from jsonb_array_elements(v_workers) w where (w ->> 'live')::boolean),
        'backfill', v_backfill
    ) || jsonb_build_object(
        'invariant_checked_at', i.checked_at,
        'invariant_check_age_seconds', round(extract(epoch from now() - i.checked_at)::numeric, 3),
        'invariant_check_ms', round(i.check_ms::numeric, 3),
        'invariant_check_mode', i.last_mode,
        'invariant_scanned', i.last_scanned,
        'invariant_found_total', i.found_total,
        'drift_pending', (select count(*) from profileguard.drift_state ds),
        'drift_oldest_pending_at', (select min(ds.first_seen_at) from profileguard.drift_state ds),
        'drift_full_pass_at', d.completed_at,
        'drift_full_pass_found', d.completed_found,
        'drift_full_pass_scanned', d.completed_scanned,
        'sync_failures_hour', win.sync_failures,
        'mapping_stale', (select cs.mapping_stale from profileguard.catalog_seen cs));
end
$pg$;

-- An age or duration in its two largest units, for the checks' messages: 45s, 3m 20s, 2h 3m, 41d 9h.
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

-- The verdict every view shows (status, /metrics, the dashboard, the alert rules): its checks in
-- order, each 'ok' or its severity while it holds; the worst `verdict` of those that hold is the
-- verdict (docs/monitoring.md). p_grace and p_slo, when given, replace the installed ones.
create or replace function profileguard.health(
    p_grace interval default null,
    p_slo interval default null
)
returns jsonb
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $pg$
with f as materialized (
    select profileguard._thresholds(p_grace, p_slo) as th, profileguard.stats() as v
), x as (
    select f.th, f.v,
        (v ->> 'missing')::bigint as missing,
        case when (v ->> 'missing')::bigint > 0 then (v ->> 'oldest_missing_age_seconds')::float8 else 0 end as age,
        case when (v ->> 'missing')::bigint > 0 then (v ->> 'repair_lag_seconds')::float8 else 0 end as lag,
        -- More users without a profile than failures ever recorded: a backlog from before the
        -- trigger (or from while it was off), which the backfill creates.
        (v ->> 'missing')::bigint > (v ->> 'failures_total')::bigint as backlog,
        (th ->> 'missing_grace_seconds')::float8 as grace,
        (th ->> 'repair_slo_seconds')::float8 as slo,
        (v ->> 'enabled')::boolean as enabled,
        (v ->> 'trigger_installed')::boolean as has_trigger,
        v ->> 'identity_table' as identity_table,
        (v ->> 'success_rate_pct')::float8 as rate,
        coalesce((v ->> 'signups_window')::bigint, 0) as signups,
        (v ->> 'trigger_failures_window')::bigint as failures,
        (v ->> 'window_covered_seconds')::float8 as covered,
        (th ->> 'success_rate_min_pct')::float8 as min_pct,
        (th ->> 'success_rate_min_signups')::numeric::bigint as min_signups,
        (v ->> 'quarantined')::bigint as quarantined,
        (th ->> 'quarantine_threshold')::numeric::bigint as quarantine_max,
        (v ->> 'live_workers')::bigint as live,
        jsonb_array_length(v -> 'workers') as registered,
        (th ->> 'worker_required')::boolean as required,
        (th ->> 'worker_heartbeat_max_age_seconds')::float8 as heartbeat,
        coalesce((v -> 'backfill' ->> 'stalled')::boolean, false) as stalled,
        (v -> 'backfill' ->> 'update_age_seconds')::float8 as backfill_age,
        (th ->> 'backfill_stall_seconds')::float8 as stall,
        (v ->> 'drift_pending')::bigint as drift,
        v ->> 'mapping_stale' as stale
    from f
)
select jsonb_build_object(
    'status', case when bool_or(c.active and c.verdict = 'unhealthy') then 'unhealthy'
                   when bool_or(c.active and c.verdict = 'degraded') then 'degraded' else 'healthy' end,
    'problems', coalesce(jsonb_agg(c.message order by c.n) filter (where c.active and c.verdict is not null),
                         '[]'),
    'warnings', coalesce(jsonb_agg(c.message order by c.n) filter (where c.active and c.verdict is null), '[]'),
    'checks', jsonb_agg(jsonb_build_object(
        'name', c.name, 'status', case when c.active then c.severity else 'ok' end,
        'severity', c.severity, 'verdict', c.verdict, 'active', c.active,
        'value', c.value, 'threshold', c.threshold, 'message', c.message) order by c.n),
    'thresholds', x.th,
    'stats', x.v)
    || (select jsonb_object_agg(k, x.v -> k) from unnest(array['users', 'missing', 'coverage_pct',
            'oldest_missing_age_seconds', 'quarantined', 'success_rate_pct', 'live_workers', 'counted_at',
            'invariant_checked_at', 'generated_at']) k)
from x cross join lateral (values
    (1, 'enabled', 'critical', 'unhealthy', not x.enabled, x.enabled::int::float8, 1::float8,
        case when x.enabled then 'the trigger is enabled'
             else 'profileguard is disabled; run: profileguard enable' end),
    (2, 'trigger', 'critical', 'unhealthy', not x.has_trigger, x.has_trigger::int, 1,
        case when x.has_trigger then format('trigger present on %s', x.identity_table)
             else format('the signup trigger on %s is missing or disabled; run: profileguard install',
                         x.identity_table) end),
    (3, 'repair_slo', 'critical', 'unhealthy', x.missing > 0 and x.age > x.slo, x.age, x.slo,
        case when x.missing > 0 and x.age > x.slo
            then format('a user has had no profile for %s, beyond the repair SLO of %s; ',
                        profileguard._duration(x.age), profileguard._duration(x.slo))
                || case when x.backlog then 'a backlog from before the trigger; run: profileguard backfill'
                        when x.lag <= x.slo
                        then 'quarantined users wait on their own data; once it is fixed, run:'
                             ' profileguard retry --all-quarantined'
                        else 'check that a worker is running: profileguard worker' end
            else format('no user has waited longer than the repair SLO of %s', profileguard._duration(x.slo))
        end),
    (4, 'missing_profiles', 'warning', 'degraded', x.missing > 0 and x.age > x.grace, x.age, x.grace,
        case when x.missing = 0 then 'every user has a profile'
            else format('%s users have no profile, the oldest for %s ', x.missing, profileguard._duration(x.age))
                || case when x.age <= x.grace
                        then format('(within the grace of %s)', profileguard._duration(x.grace))
                        else format('(grace %s); ', profileguard._duration(x.grace))
                            || case when x.backlog
                                    then 'more than ever failed: a backlog from before the trigger;'
                                         ' run: profileguard backfill'
                                    else 'repair them: profileguard worker' end
                   end
        end),
    (5, 'success_rate', 'warning', null, x.rate is not null
            and greatest(x.signups, x.failures) >= x.min_signups and x.rate < x.min_pct, x.rate, x.min_pct,
        case when x.rate is null then format('no signups in the last %s', profileguard._duration(x.covered))
            else format('trigger success rate %s%% over the last %s (%s failures in %s signups;'
                        ' minimum %s%% from %s signups); the worker repairs what it misses',
                        round(x.rate::numeric, 2), profileguard._duration(x.covered), x.failures,
                        x.signups, x.min_pct, x.min_signups)
        end),
    (6, 'quarantine', 'warning', null, x.quarantined > x.quarantine_max, x.quarantined, x.quarantine_max,
        case when x.quarantined = 0 then 'nobody is quarantined'
            else format('%s quarantined users (threshold %s); fix the cause, then run:'
                        ' profileguard retry --all-quarantined', x.quarantined, x.quarantine_max)
        end),
    (7, 'no_live_worker', 'warning', null, x.live = 0 and (x.required or x.registered > 0), x.live, 1,
        case when x.registered = 0 and not x.required
            then 'no worker registered (alerts.worker_required is off)'
            else format('%s of %s registered workers are live (heartbeat within %s)%s',
                        x.live, x.registered, profileguard._duration(x.heartbeat),
                        case when x.live = 0 then '; start one: profileguard worker' else '' end)
        end),
    (8, 'backfill_stalled', 'warning', null, x.stalled, x.backfill_age, x.stall,
        case when x.stalled
            then format('backfill run %s is running but has not progressed for %s (threshold %s)',
                        x.v -> 'backfill' ->> 'id', profileguard._duration(x.backfill_age),
                        profileguard._duration(x.stall))
            else 'no stalled backfill'
        end),
    (9, 'drift', 'warning', null, x.drift > 0, x.drift, 0,
        case when x.drift > 0
            then format('%s profiles are out of step with their users and the worker could not'
                        ' bring them back yet; see: profileguard drift', x.drift)
            else 'profiles are in step with their users'
        end),
    (10, 'mapping', 'warning', 'degraded', x.stale is not null, (x.stale is not null)::int, 0,
        coalesce(x.stale, 'the functions generated from the mapping match the profile table'))
) as c (n, name, severity, verdict, active, value, threshold, message)
group by x.th, x.v
$pg$;

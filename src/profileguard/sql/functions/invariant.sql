-- The invariant "every user has a profile", checked within seconds without an index on the identity
-- table (hosted Supabase allows none on auth.users): tail, wide and full passes, docs/monitoring.md.
-- What they find goes into missing_profiles, which the worker follows through found_missing().

-- One pass: rows in blocks >= p_from_block (null: all) whose xmin is not older than p_since (null:
-- any) without a profile go into missing_profiles, first seen at created_at clamped to [p_floor,
-- now()]. `counted`: rows no later tail pass reads (xmin older than p_before, block < p_keep_block).
create or replace function profileguard._invariant_pass(
    p_from_block bigint, p_since xid8, p_before xid8, p_floor timestamptz, p_keep_block bigint,
    out scanned bigint, out counted bigint, out new_missing bigint, out oldest timestamptz
)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set jit = off  -- a plan over jit_above_cost would compile on every check
as $pg$
declare
    t record := profileguard._monitored_tables();
    v_where text := 'true';
begin
    if p_from_block is not null and p_from_block > 0 then
        v_where := format('u.ctid >= %L::tid', format('(%s,0)', p_from_block));
    end if;
    if p_since is not null then
        v_where := v_where || format(' and age(u.xmin) between 0 and age(%L::xid)', pg_catalog.xid(p_since));
    end if;
    execute format(
        'with r as materialized ('
        '  select u.%1$I as k, %2$s as c, age(u.xmin) as a,'
        '   (u.ctid::text::point)[0]::bigint as b from %3$s u where %4$s'
        '), m as ('
        '  insert into profileguard.missing_profiles as mp (user_id, first_seen_at, seen_at)'
        '  select r.k::text, greatest(least(r.c, now()), $1), now()'
        '  from r where not exists (select from %5$s p where p.%6$I = r.k)'
        '  on conflict (user_id) do nothing'
        '  returning mp.first_seen_at'
        ') select (select count(*) from r),'
        '   (select count(*) from r where r.a > age($2::xid) or r.b < $3),'
        '   (select count(*) from m), (select min(first_seen_at) from m)',
        t.identity_key,
        case when t.has_created_at then 'u.created_at::timestamptz' else 'null::timestamptz' end,
        t.identity, v_where, t.profile, t.profile_key)
    into scanned, counted, new_missing, oldest
    using p_floor, pg_catalog.xid(p_before), coalesce(p_keep_block, 0);
end
$pg$;

-- Forget users of missing_profiles that have a profile now or no longer exist, 5000 a call, by key
-- probes (the planner settings keep it from scanning the users or the profiles).
create or replace function profileguard._invariant_prune()
returns bigint
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set enable_hashjoin = off
set enable_mergejoin = off
as $pg$
declare
    t record := profileguard._monitored_tables();
    v_gone bigint;
begin
    if not exists (select from profileguard.missing_profiles) then
        return 0;
    end if;
    execute format(
        'with c as (select m.user_id from profileguard.missing_profiles m order by m.found_seq limit 5000),'
        ' d as (select c.user_id from c where exists (select from %1$s p where p.%2$I = c.user_id::%5$s)'
        '  union select c.user_id from c where not exists (select from %3$s u where u.%4$I = c.user_id::%5$s)),'
        ' g as (delete from profileguard.missing_profiles m using d where m.user_id = d.user_id returning 1)'
        ' select count(*) from g',
        t.profile, t.profile_key, t.identity, t.identity_key, t.key_type)
    into v_gone;
    return v_gone;
end
$pg$;

-- The bounded frequent check: a tail pass (plus a wide one when needed), or a full pass after a rewrite.
-- Null when the last check is younger than p_min_interval or another session checks or recounts now.
create or replace function profileguard.check_invariant(p_min_interval interval default '2 seconds')
returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    t record;
    st record;
    p record;
    v_started timestamptz := clock_timestamp();
    v_inserted bigint;
    v_blocks bigint;
    v_xmin xid8;
    v_xmax xid8;
    v_node oid;
    v_mode text := 'tail';
    v_scanned bigint := 0;
    v_found bigint := 0;
    v_advance boolean;
    v_wide_started timestamptz;
    v_gone bigint;
begin
    if (select s.checked_at > now() - p_min_interval from profileguard.invariant_scan s) then
        return null;
    end if;
    -- The recount's lock: a check and a full recount never run at once (the recount sees it all).
    if not pg_try_advisory_xact_lock(hashtext('profileguard.refresh_stats')) then
        return null;
    end if;
    select * into st from profileguard.invariant_scan;
    if st.checked_at > now() - p_min_interval then
        return null;
    end if;
    t := profileguard._monitored_tables();
    -- Order matters: the writers, the insert count, the size, then the snapshot. The tail moves on to
    -- next_block once no open transaction that may have written the table (it holds a lock on it, or
    -- is prepared) is older than next_xid.
    v_advance := st.next_xid is not null and not exists (
        select from pg_catalog.pg_locks l
        left join pg_catalog.pg_locks x
          on x.locktype = 'transactionid' and x.mode = 'ExclusiveLock' and x.granted
         and x.virtualtransaction = l.virtualtransaction
        where l.locktype = 'relation' and l.relation = t.identity
          and l.database = (select d.oid from pg_catalog.pg_database d
                            where d.datname = pg_catalog.current_database())
          and (l.pid is null or pg_catalog.age(x.transactionid) > pg_catalog.age(pg_catalog.xid(st.next_xid))));
    v_inserted := pg_catalog.pg_stat_get_tuples_inserted(t.identity);
    v_blocks := pg_catalog.pg_relation_size(t.identity) / current_setting('block_size')::bigint;
    select c.relfilenode into v_node from pg_catalog.pg_class c where c.oid = t.identity;
    select pg_catalog.pg_snapshot_xmin(s), pg_catalog.pg_snapshot_xmax(s)
      into v_xmin, v_xmax from pg_catalog.pg_current_snapshot() s;
    v_advance := v_advance or st.next_xid <= v_xmin;

    if st.seen_xid is null or st.identity_oid is distinct from t.identity::oid
       or st.relfilenode is distinct from v_node
       or v_xmax::text::numeric - least(st.seen_xid, st.wide_xid)::text::numeric > 1073741824 then
        v_mode := 'full';
        p := profileguard._invariant_pass(null, null, v_xmin, null, null);
    else
        p := profileguard._invariant_pass(st.tail_block, st.seen_xid, v_xmin, st.checked_at,
                                          case when v_advance then st.next_block end);
        -- The collector counted more inserts than the tail passes saw: some went into free space of
        -- earlier pages. Wide passes take at most a tenth of the time.
        if (v_inserted - st.inserted_base > st.tail_rows + p.scanned or v_inserted < st.inserted_base)
           and (st.wide_ms is null or st.wide_at + make_interval(secs => st.wide_ms / 100) <= v_started) then
            v_mode := 'wide';
            v_scanned := p.scanned;
            v_found := p.new_missing;
            v_wide_started := clock_timestamp();
            p := profileguard._invariant_pass(null, st.wide_xid, v_xmin, st.wide_at, null);
        end if;
    end if;
    v_scanned := v_scanned + p.scanned;
    v_found := v_found + p.new_missing;
    v_gone := profileguard._invariant_prune();

    -- After a full pass the tail starts at block 0 until next_xid is reached (open transactions'
    -- rows may lie anywhere); after a full or wide pass, its count starts below by the rows later
    -- tail passes will count again.
    update profileguard.invariant_scan set
        identity_oid = t.identity,
        relfilenode = v_node,
        seen_xid = v_xmin,
        tail_block = case when v_mode = 'full' then 0 when v_advance then next_block else tail_block end,
        next_block = case when v_mode = 'full' or v_advance then greatest(v_blocks - 1, 0) else next_block end,
        next_xid = case when v_mode = 'full' or v_advance then v_xmax else next_xid end,
        tail_rows = case when v_mode = 'tail' then tail_rows + p.counted else p.counted - p.scanned end,
        wide_xid = case when v_mode = 'tail' then wide_xid else v_xmin end,
        wide_at = case when v_mode = 'tail' then wide_at else v_started end,
        inserted_base = case when v_mode = 'tail' then inserted_base else v_inserted end,
        wide_ms = case when v_mode = 'tail' then wide_ms
                       when v_mode = 'wide' then extract(epoch from clock_timestamp() - v_wide_started) * 1000 end,
        checked_at = v_started,
        check_ms = extract(epoch from clock_timestamp() - v_started) * 1000,
        last_mode = v_mode,
        last_scanned = v_scanned,
        found_total = found_total + v_found;
    if v_found > 0 then
        -- The worker LISTENs here; found_missing() names the users.
        perform pg_notify('profileguard', json_build_object(
            'source', 'invariant', 'found', v_found, 'mode', v_mode)::text);
    end if;
    if v_found > 0 or v_gone > 0 then
        update profileguard.counters set (missing, oldest_missing_at) =
            (select count(*), min(m.first_seen_at) from profileguard.missing_profiles m);
    end if;
    return jsonb_build_object('mode', v_mode, 'scanned', v_scanned, 'found', v_found, 'forgotten', v_gone,
                              'tail_pages', v_blocks - coalesce(st.tail_block, 0),
                              'ms', extract(epoch from clock_timestamp() - v_started) * 1000);
end
$pg$;

-- Users the checks and recounts found without a profile that still have none, after the cursor
-- p_after (a found_seq), oldest finding first: what the worker repairs.
create or replace function profileguard.found_missing(p_after bigint default 0, p_limit integer default 500)
returns table (found_seq bigint, user_id text, first_seen_at timestamptz)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
set enable_hashjoin = off
set enable_mergejoin = off
as $pg$
declare
    t record := profileguard._monitored_tables();
begin
    for found_seq, user_id, first_seen_at in execute format(
        'select m.found_seq, m.user_id, m.first_seen_at from profileguard.missing_profiles m'
        ' where m.found_seq > $1'
        '   and exists (select from %1$s u where u.%2$I = m.user_id::%5$s)'
        '   and not exists (select from %3$s p where p.%4$I = m.user_id::%5$s)'
        ' order by m.found_seq limit $2',
        t.identity, t.identity_key, t.profile, t.profile_key, t.key_type)
    using coalesce(p_after, 0), greatest(1, least(coalesce(p_limit, 500), 10000))
    loop
        return next;
    end loop;
end
$pg$;

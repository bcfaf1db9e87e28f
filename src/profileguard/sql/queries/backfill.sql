-- Queries of the backfill. Each starts with a "-- name:" line; %(x)s are bound parameters.
-- {identity}, {identity_key}, {profile}, {profile_key} and {key_type} are filled in with
-- psycopg.sql (quoted identifiers; the type text comes from the catalog).

-- name: has_heartbeat
-- The run registry has its lease column (schema version 17).
select exists (select from pg_catalog.pg_attribute a
               where a.attrelid = 'profileguard.backfill_runs'::pg_catalog.regclass
                 and a.attname = 'heartbeat_at' and not a.attisdropped)

-- name: claim_lock
-- Held while a run is claimed (see `running`), for that one transaction only.
select pg_advisory_xact_lock(hashtext('profileguard.backfill'))

-- name: running
-- The runs that say they are running, newest first, and how many seconds ago their holder last
-- said it was alive (by the server's clock: no client clock is compared).
select id, owner, started_at, updated_at, scanned, dry_run,
       extract(epoch from clock_timestamp() - coalesce(heartbeat_at, updated_at))::float8
from profileguard.backfill_runs
where state = 'running'
order by id desc

-- name: mark_abandoned
-- Called under the claim lock: runs whose holder is gone (killed, crashed, cut off for longer than
-- the lease) stop counting as running.
update profileguard.backfill_runs
set state = 'interrupted',
    detail = coalesce(detail, jsonb_build_object())
             || jsonb_build_object('abandoned_by', owner, 'taken_over_by', %(owner)s::text)
where state = 'running' and id = any(%(ids)s::bigint[])
returning id

-- name: heartbeat
-- The holder is alive: its lease goes on (no row: the run was taken over or has ended).
update profileguard.backfill_runs
set heartbeat_at = clock_timestamp()
where id = %(id)s and state = 'running' and owner = %(owner)s
returning id

-- name: holder
-- Who holds a run now (after a checkpoint found it no longer ours).
select state, owner, detail ->> 'taken_over_by'
from profileguard.backfill_runs
where id = %(id)s

-- name: latest
select id, state, cursor, scanned, created, failed, quarantined, batches, batch_size,
       elapsed_seconds, total_estimate, ordering, phase, since_xid, heap_file
from profileguard.backfill_runs
where dry_run = %(dry_run)s
order by id desc
limit 1

-- name: start
-- A run in physical order. since_xid is the oldest transaction still running now (as a 32-bit
-- xid): every row version written after this point has an xmin at least as new.
insert into profileguard.backfill_runs (state, dry_run, total_estimate, batch_size, owner, detail,
                                        ordering, phase, since_xid, heap_file, heartbeat_at)
values ('running', %(dry_run)s, %(total)s, %(batch_size)s, %(owner)s, %(detail)s,
        'pages', 'sweep',
        pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint %% 4294967296,
        pg_catalog.pg_relation_filenode(%(table)s::regclass), clock_timestamp())
returning id, since_xid, heap_file

-- name: claim
update profileguard.backfill_runs
set state = 'running', owner = %(owner)s, finished_at = null, updated_at = clock_timestamp(),
    heartbeat_at = clock_timestamp(), resumed = resumed + 1,
    total_estimate = greatest(total_estimate, %(total)s)
where id = %(id)s

-- name: checkpoint
-- After each batch: the resume point and the counters. `created` of a real run is added by
-- profileguard.backfill_pages itself (in the batch's transaction), so %(created)s is 0 there.
-- Only while the run is still ours: one taken over after its lease ran out stops here.
update profileguard.backfill_runs
set cursor = coalesce(%(cursor)s, cursor),
    scanned = scanned + %(scanned)s,
    created = created + %(created)s,
    failed = failed + %(failed)s,
    quarantined = quarantined + %(quarantined)s,
    batches = batches + 1,
    batch_size = %(batch_size)s,
    elapsed_seconds = elapsed_seconds + %(elapsed)s,
    updated_at = clock_timestamp()
where id = %(id)s and state = 'running' and owner = %(owner)s
returning id

-- name: finish
-- The end state, unless the run was taken over meanwhile (then it is the new holder's to record).
update profileguard.backfill_runs
set state = %(state)s::text,
    finished_at = case when %(state)s::text = 'completed' then clock_timestamp() end,
    elapsed_seconds = elapsed_seconds + %(elapsed)s,
    updated_at = clock_timestamp(),
    detail = coalesce(detail, jsonb_build_object()) || %(detail)s::jsonb
where id = %(id)s and state = 'running' and owner = %(owner)s
returning scanned, created, failed, quarantined, batches, elapsed_seconds, cursor

-- name: set_phase
-- The sweep is done: the catch-up starts again at page 0.
update profileguard.backfill_runs
set phase = %(phase)s, cursor = null, updated_at = clock_timestamp()
where id = %(id)s

-- name: heap
-- The table's size in pages now, its file (a rewrite changes it) and rows per page (estimated).
select pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::bigint,
       pg_catalog.pg_relation_filenode(c.oid)::bigint,
       case when c.relpages > 0 and c.reltuples > 0 then c.reltuples / c.relpages end
from pg_catalog.pg_class c
where c.oid = %(table)s::regclass

-- name: timeouts
-- Per batch transaction. synchronous_commit is off: a crash may lose the last batches committed,
-- together with their checkpoint, and --resume simply does them again (every batch is
-- idempotent), so no batch needs to wait for its WAL flush.
select set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true),
       set_config('synchronous_commit', 'off', true)

-- name: estimate
select greatest(c.reltuples, 0)::bigint as estimate
from pg_catalog.pg_class c
where c.oid = to_regclass(%(table)s)

-- name: count
select count(*) from {identity}

-- name: sample_profiles
select to_jsonb(p) from {profile} p
where p.{profile_key} = any(%(ids)s::{key_type}[])
order by p.{profile_key}

-- name: analyze_profile
-- Fresh statistics while the profile table grows (a new table has none), so the batch plan keeps
-- looking up taken usernames by index instead of hashing the whole, growing, table each batch.
analyze {profile}

-- name: insert_pages
select profileguard.backfill_pages(%(first)s::bigint, %(last)s::bigint, %(run)s::bigint,
                                   %(since)s::xid, %(all_rows)s::boolean)

-- name: sample_ids_pages
select u.{identity_key} from {identity} u
where u.ctid >= pg_catalog.format('(%%s,0)', %(first)s::bigint)::pg_catalog.tid
  and u.ctid < pg_catalog.format('(%%s,0)', %(last)s::bigint)::pg_catalog.tid
  and not exists (select from {profile} p where p.{profile_key} = u.{identity_key})
limit %(n)s

-- name: pages_missing
-- A failed page range: how many users it holds and those without a profile (with %(since)s, a
-- catch-up, only the rows written since the run began), for the repair engine; apart, those
-- already quarantined (left to the worker's slow retry and `profileguard retry`).
with missing as (
    select u.{identity_key} as id,
           exists (select from profileguard.repair_state r
                   where r.user_id = u.{identity_key}::text
                     and r.quarantined_at is not null) as quarantined
    from {identity} u
    where u.ctid >= pg_catalog.format('(%%s,0)', %(first)s::bigint)::pg_catalog.tid
      and u.ctid < pg_catalog.format('(%%s,0)', %(last)s::bigint)::pg_catalog.tid
      and (%(since)s::xid is null or pg_catalog.age(u.xmin) <= pg_catalog.age(%(since)s::xid))
      and not exists (select from {profile} p where p.{profile_key} = u.{identity_key})
)
select (select count(*) from {identity} u
        where u.ctid >= pg_catalog.format('(%%s,0)', %(first)s::bigint)::pg_catalog.tid
          and u.ctid < pg_catalog.format('(%%s,0)', %(last)s::bigint)::pg_catalog.tid),
       array(select m.id from missing m where not m.quarantined),
       array(select m.id from missing m where m.quarantined)

-- name: quarantined_failures
-- Users of a failed batch quarantined before it: why (as recorded).
select r.user_id, r.last_sqlstate, r.last_message
from profileguard.repair_state r
where r.user_id = any(array(select x::text from unnest(%(ids)s::{key_type}[]) x))
order by r.user_id
limit %(n)s

-- name: repair
-- The repair engine on the users of a failed batch. One attempt quarantines: the backfill does
-- not come back to a user (the worker retries quarantined users on its slow cadence).
select profileguard.repair(%(ids)s::{key_type}[], 'backfill', 1)

-- name: repair_failures
-- The users the engine call just made (in this transaction) charged with a failure of their own
-- (not those a closing breaker released: due now, charged nothing).
select r.user_id, r.last_sqlstate, r.last_message
from profileguard.repair_state r
where r.user_id = any(array(select x::text from unnest(%(ids)s::{key_type}[]) x))
  and r.updated_at = pg_catalog.now() and r.waiting_on is null and r.last_sqlstate is not null
  and r.next_attempt_at <> pg_catalog.now()
order by r.user_id
limit %(n)s

-- name: repair_deferred
-- The ids the engine call left untried (its subtransaction budget ran out): still without a
-- profile, and neither charged nor held by this transaction (a user a closing breaker released
-- in it is due now: untried).
select x from unnest(%(ids)s::{key_type}[]) x
where not exists (select from {profile} p where p.{profile_key} = x)
  and not exists (select from profileguard.repair_state r
                  where r.user_id = x::text and r.updated_at = pg_catalog.now()
                    and (r.waiting_on is not null or r.next_attempt_at <> pg_catalog.now()))

-- name: add_created
-- Profiles the engine created for the run (in the engine call's transaction).
update profileguard.backfill_runs
set created = created + %(n)s, updated_at = clock_timestamp()
where id = %(id)s

-- name: settle_breakers
-- A run completed: probe the engine's open breakers that are due (one that held users back from
-- a fault fixed before --resume closes, its users released).
select profileguard.probe_breakers('backfill')

-- name: forget_repaired
-- A run completed: users who have their profile now need no repair state (held or charged
-- before the run created their profile).
delete from profileguard.repair_state r
where exists (select from {profile} p where p.{profile_key} = r.user_id::{key_type})

-- profileguard schema, version 12: health from the invariant "every user has a profile" (the check
-- itself: functions/invariant.sql).
-- Runs inside the install transaction. Nothing here is granted to anyone (see privileges.sql).

alter table profileguard.missing_profiles
    add column found_seq bigint generated always as identity;
create index missing_profiles_found_seq_idx on profileguard.missing_profiles (found_seq);

-- One row: where the bounded check resumes. xid8 values never wrap; rows carry 32-bit xmins,
-- compared through age() against xid(x).
create table profileguard.invariant_scan (
    singleton boolean primary key default true check (singleton),
    identity_oid oid,
    relfilenode oid,
    seen_xid xid8,                  -- rows with an older xmin have been checked
    tail_block bigint,              -- appended rows with xmin >= seen_xid lie at or after it
    next_xid xid8,                  -- candidate: rows with xmin >= next_xid lie at or after
    next_block bigint,              --   next_block (taken over once seen_xid reaches next_xid)
    wide_xid xid8,                  -- the last wide/full pass checked rows older than this
    wide_at timestamptz,
    wide_ms double precision,        -- how long the last wide pass took (paces the next one)
    inserted_base bigint,           -- the collector's insert count at the last wide/full pass
    tail_rows bigint not null default 0,  -- committed rows the tail passes saw since then
    checked_at timestamptz,
    check_ms double precision,
    last_mode text,
    last_scanned bigint,
    found_total bigint not null default 0
);
insert into profileguard.invariant_scan default values;
alter table profileguard.invariant_scan enable row level security;

-- The full sweep became _sweep() and the figures _figures(): refresh_stats() and stats() run the
-- check first. The verdict takes its thresholds as arguments.
drop function if exists profileguard.refresh_stats();
drop function if exists profileguard.stats(interval, interval, interval);
drop function if exists profileguard.health();

-- profileguard schema, version 6: the backfill walks the users table in physical order.
-- Runs inside the install transaction. Nothing here is granted to anyone (see privileges.sql).

-- `ordering` says what a run's cursor means: 'key' (runs of version 3 to 5: the last identity key
-- done) or 'pages' (the heap page reached, exclusive). A 'pages' run sweeps the pages
-- (`phase` 'sweep'), then catches up on the rows written since it began (`phase` 'catchup':
-- rows whose xmin is not older than `since_xid`, the oldest transaction running at its start),
-- restarting its cursor at page 0. `heap_file` is the table's relfilenode at the start: when it
-- changes (VACUUM FULL, CLUSTER) every row may have moved, so the catch-up takes every row.
alter table profileguard.backfill_runs
    add column ordering text not null default 'key' check (ordering in ('key', 'pages')),
    add column phase text check (phase is null or phase in ('sweep', 'catchup')),
    add column since_xid bigint,
    add column heap_file bigint;

-- profileguard schema, version 3: the backfill's run registry and checkpoint.
-- Runs inside the install transaction. Nothing here is granted to anyone (see privileges.sql).

-- One row per backfill run: its state, the last identity key done (the resume point, as text),
-- its counters and who runs it. `updated_at` moves with every batch, so a run that stays
-- 'running' while `updated_at` stands still has stalled (or its process died).
create table profileguard.backfill_runs (
    id bigint generated always as identity primary key,
    started_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    finished_at timestamptz,
    state text not null check (state in ('running', 'completed', 'failed', 'interrupted')),
    dry_run boolean not null default false,
    cursor text,
    total_estimate bigint,
    scanned bigint not null default 0 check (scanned >= 0),
    created bigint not null default 0 check (created >= 0),
    failed bigint not null default 0 check (failed >= 0),
    quarantined bigint not null default 0 check (quarantined >= 0),
    batches bigint not null default 0 check (batches >= 0),
    batch_size integer,
    owner text,
    detail jsonb,
    elapsed_seconds double precision not null default 0 check (elapsed_seconds >= 0),
    resumed integer not null default 0 check (resumed >= 0)
);
create index backfill_runs_unfinished_idx on profileguard.backfill_runs (id)
    where state <> 'completed';

alter table profileguard.backfill_runs enable row level security;

-- profileguard schema, version 14: profiles kept in step with their users after creation.
-- Runs inside the install transaction. Nothing here is granted to anyone (see privileges.sql).
-- (Numbered after the issue that asked for it: migrations may land in any order.)

-- 'prune': a profile without a user, removed by `profileguard prune` (one row per profile).
alter table profileguard.events drop constraint events_kind_check;
alter table profileguard.events add constraint events_kind_check
    check (kind in ('failure', 'repair', 'backfill', 'config', 'quarantine', 'prune'));

-- The worker reads the UPDATE trigger's recorded failures after a cursor: by this index, however
-- large the audit trail grows.
create index events_sync_failure_idx on profileguard.events (id)
    where kind = 'failure' and source = 'sync';

-- One row per user whose profile the worker found out of step with the user and could not yet
-- bring back: the drifted columns, attempts, when to try again, why it failed. Deleted once the
-- profile is in step. Kept apart from repair_state, which is about missing profiles.
create table profileguard.drift_state (
    user_id text primary key,
    columns text[] not null default '{}',
    attempts integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null default now(),
    last_sqlstate text check (last_sqlstate is null or last_sqlstate ~ '^[0-9A-Z]{5}$'),
    last_message text,
    first_seen_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index drift_state_due_idx on profileguard.drift_state (next_attempt_at);

-- One row: the worker's bounded full drift pass (where it is, what the last complete one found).
create table profileguard.drift_pass (
    singleton boolean primary key default true check (singleton),
    cursor text,
    started_at timestamptz,
    scanned bigint not null default 0,
    found bigint not null default 0,
    fixed bigint not null default 0,
    completed_at timestamptz,
    completed_scanned bigint,
    completed_found bigint,
    updated_at timestamptz not null default now()
);
insert into profileguard.drift_pass default values;

alter table profileguard.drift_state enable row level security;
alter table profileguard.drift_pass enable row level security;

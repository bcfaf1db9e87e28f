-- profileguard schema, version 2: the reconciler's per-user repair state and its worker registry.
-- Runs inside the install transaction. Nothing here is granted to anyone (see privileges.sql).

-- One row per user the reconciler failed to repair: attempts so far, when to try again, why it
-- failed, and (after too many attempts) when it was quarantined. Deleted once the user is repaired.
create table profileguard.repair_state (
    user_id text primary key,
    attempts integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null default now(),
    last_sqlstate text check (last_sqlstate is null or last_sqlstate ~ '^[0-9A-Z]{5}$'),
    last_message text,
    quarantined_at timestamptz,
    history jsonb not null default '[]'::jsonb check (jsonb_typeof(history) = 'array'),
    updated_at timestamptz not null default now()
);
create index repair_state_due_idx on profileguard.repair_state (next_attempt_at)
    where quarantined_at is null;
create index repair_state_quarantined_idx on profileguard.repair_state (quarantined_at)
    where quarantined_at is not null;

-- One row per reconciler worker (thread, process or host), refreshed by its heartbeat.
create table profileguard.workers (
    worker_id text primary key,
    hostname text not null,
    pid integer not null,
    started_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    stats jsonb not null default '{}'::jsonb
);

alter table profileguard.repair_state enable row level security;
alter table profileguard.workers enable row level security;

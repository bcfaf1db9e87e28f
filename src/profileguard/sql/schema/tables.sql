-- profileguard's tables and indexes as they are now: what a fresh install creates. An upgrade
-- reaches the same through the migrations (migrations/), which a test compares with this file.
-- Functions come next (functions/), then the triggers on these tables (triggers.sql). Nothing here
-- is granted to anyone (privileges.sql); every table has row level security on, and a restrictive
-- policy false for every role (owner_only): only its owner and superusers or BYPASSRLS roles, which
-- RLS does not limit, touch it; a grant or a permissive policy added by mistake shows nothing.

-- Schema versions applied (one row per file of migrations/).
create table profileguard.migrations (
    version integer primary key,
    name text not null,
    applied_at timestamptz not null default now()
);

-- One row: the feature flag, strict mode and what the install was configured with.
create table profileguard.settings (
    singleton boolean primary key default true check (singleton),
    enabled boolean not null default true,
    strict boolean not null default false,
    identity_table text not null,
    identity_key text not null,
    profile_table text not null,
    profile_key text not null,
    config jsonb not null default '{}'::jsonb,
    package_version text not null,
    installed_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- The audit trail: failures, repairs, backfills, manual ensures, configuration changes, pruned
-- orphans, breakers. Never a row per successful signup.
create table profileguard.events (
    id bigint generated always as identity primary key,
    created_at timestamptz not null default now(),
    kind text not null,
    source text not null,
    user_id text,
    sqlstate text check (sqlstate is null or sqlstate ~ '^[0-9A-Z]{5}$'),
    category text,
    message text,
    detail jsonb,
    constraint events_kind_check
        check (kind in ('failure', 'repair', 'backfill', 'config', 'quarantine', 'prune', 'breaker'))
);
create index events_created_at_idx on profileguard.events (created_at);
create index events_user_idx on profileguard.events (user_id, created_at) where user_id is not null;
create index events_failure_idx on profileguard.events (created_at) where kind = 'failure';
-- The worker reads the UPDATE trigger's recorded failures after a cursor: by this index, however
-- large the audit trail grows.
create index events_sync_failure_idx on profileguard.events (id)
    where kind = 'failure' and source = 'sync';

create view profileguard.failures as
    select id, created_at, source, user_id, sqlstate, category, message, detail
    from profileguard.events
    where kind = 'failure';

-- One row per user the worker failed to repair: attempts so far, when to try again, why it failed
-- (fingerprint: the last failure's), the open breaker holding it back (waiting_on: its attempts
-- are not counted while it waits), and when it was quarantined. Deleted once the user is repaired.
create table profileguard.repair_state (
    user_id text primary key,
    attempts integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null default now(),
    last_sqlstate text check (last_sqlstate is null or last_sqlstate ~ '^[0-9A-Z]{5}$'),
    last_message text,
    quarantined_at timestamptz,
    history jsonb not null default '[]'::jsonb check (jsonb_typeof(history) = 'array'),
    updated_at timestamptz not null default now(),
    fingerprint text,
    waiting_on text
);
create index repair_state_due_idx on profileguard.repair_state (next_attempt_at)
    where quarantined_at is null;
create index repair_state_quarantined_idx on profileguard.repair_state (quarantined_at)
    where quarantined_at is not null;
create index repair_state_waiting_idx on profileguard.repair_state (waiting_on)
    where waiting_on is not null;
create index repair_state_fingerprint_idx on profileguard.repair_state (fingerprint, updated_at)
    where fingerprint is not null;

-- One row per worker (thread, process or host), refreshed by its heartbeat.
create table profileguard.workers (
    worker_id text primary key,
    hostname text not null,
    pid integer not null,
    started_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    stats jsonb not null default '{}'::jsonb
);

-- One row per fingerprint seen to fail everyone ('open': users wait, one canary is probed at a
-- growing interval) or seen to fail only some users ('user_specific', until expires_at: their
-- failures are charged to them as usual).
create table profileguard.breakers (
    fingerprint text primary key,
    state text not null check (state in ('open', 'user_specific')),
    sqlstate text not null check (sqlstate ~ '^[0-9A-Z]{5}$'),
    object text,
    message text,
    opened_at timestamptz not null default now(),
    probes integer not null default 0 check (probes >= 0),
    probe_interval double precision not null default 0.25 check (probe_interval > 0),
    next_probe_at timestamptz not null default now(),
    expires_at timestamptz,
    updated_at timestamptz not null default now()
);

-- One row: the catalog fingerprint the last look saw (a change releases waiting users).
create table profileguard.catalog_seen (
    singleton boolean primary key default true check (singleton),
    version text,
    checked_at timestamptz not null default now(),
    changed_at timestamptz,
    -- Why the functions generated from the mapping no longer match the profile table (NULL: they
    -- do), set by the worker's re-plan where it may not re-create them itself.
    mapping_stale text
);
insert into profileguard.catalog_seen default values;

-- One row per backfill run: its state, cursor ('key' or 'pages', see `ordering`), counters and lease holder
-- (docs/internals.md). A 'running' run whose `updated_at` stands still has stalled.
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
    resumed integer not null default 0 check (resumed >= 0),
    ordering text not null default 'key' check (ordering in ('key', 'pages')),
    phase text check (phase is null or phase in ('sweep', 'catchup')),
    since_xid bigint,
    heap_file bigint,
    heartbeat_at timestamptz
);
create index backfill_runs_unfinished_idx on profileguard.backfill_runs (id)
    where state <> 'completed';

-- Legacy triggers `install --replace-trigger` took over; `uninstall` restores each from `saved_definition`
-- (docs/internals.md). `learned_mapping`: what the legacy function filled, the mapping while none is configured.
create table profileguard.replaced_triggers (
    table_name text not null,
    trigger_name text not null,
    function_name text not null,
    previous_mode text not null check (previous_mode in ('O', 'A', 'R')),
    replaced_at timestamptz not null default now(),
    method text not null default 'disabled' check (method in ('disabled', 'function', 'never_fires')),
    saved_definition text,
    learned_mapping jsonb,
    primary key (table_name, trigger_name)
);

-- Profile-creating triggers `install --keep-trigger` left beside profileguard (never changed, so
-- nothing to restore): installing again does not ask again, and audit reports them as kept.
create table profileguard.kept_triggers (
    table_name text not null,
    trigger_name text not null,
    function_name text not null,
    kept_at timestamptz not null default now(),
    primary key (table_name, trigger_name)
);

-- One row: the figures of the last full sweep and the watermarks the cheap read starts from.
create table profileguard.counters (
    singleton boolean primary key default true check (singleton),
    refreshed_at timestamptz,
    refresh_ms double precision,
    users bigint not null default 0,
    missing bigint not null default 0,
    oldest_missing_at timestamptz,
    identity_oid oid,
    inserted_at_refresh bigint,
    deleted_at_refresh bigint,
    events_horizon timestamptz not null default '-infinity'
);
insert into profileguard.counters default values;

-- Users a sweep, a check of the invariant or a failure event found without a profile; re-checked
-- on every read. `found_seq` orders the findings for the worker (profileguard.found_missing()).
create table profileguard.missing_profiles (
    user_id text primary key,
    first_seen_at timestamptz not null default now(),
    seen_at timestamptz not null default now(),
    found_seq bigint generated always as identity
);
create index missing_profiles_found_seq_idx on profileguard.missing_profiles (found_seq);

-- Audit-trail totals per kind/source/category, for events created before counters.events_horizon.
create table profileguard.event_totals (
    kind text not null,
    source text not null,
    category text not null default '',
    total bigint not null default 0 check (total >= 0),
    primary key (kind, source, category)
);

-- A small time series (one row per ~10 s of reads at most, kept 8 days): signups in a window,
-- missing profiles over time.
create table profileguard.stats_samples (
    taken_at timestamptz primary key default now(),
    inserted bigint,
    deleted bigint,
    users bigint not null,
    missing bigint not null,
    quarantined bigint not null,
    failures bigint not null,
    repairs bigint not null
);

-- One row per alert rule: firing or not, and a message still to deliver. Transitions are
-- conditional UPDATEs, so when several processes evaluate, one of them sends each message.
create table profileguard.alert_state (
    rule text primary key,
    state text not null default 'ok' check (state in ('ok', 'firing')),
    severity text not null default 'warning',
    value double precision,
    threshold double precision,
    message text,
    fired_at timestamptz,
    resolved_at timestamptz,
    evaluated_at timestamptz not null default now(),
    fire_count bigint not null default 0,
    pending_delivery text check (pending_delivery in ('firing', 'resolved')),
    delivery_attempts integer not null default 0,
    last_delivery_error text,
    delivered_at timestamptz
);

-- One row: where the bounded check of the invariant resumes (see functions/invariant.sql). xid8
-- values never wrap; rows carry 32-bit xmins, compared through age() against xid(x).
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

alter table profileguard.migrations enable row level security;
alter table profileguard.settings enable row level security;
alter table profileguard.events enable row level security;
alter table profileguard.repair_state enable row level security;
alter table profileguard.workers enable row level security;
alter table profileguard.breakers enable row level security;
alter table profileguard.catalog_seen enable row level security;
alter table profileguard.backfill_runs enable row level security;
alter table profileguard.replaced_triggers enable row level security;
alter table profileguard.kept_triggers enable row level security;
alter table profileguard.counters enable row level security;
alter table profileguard.missing_profiles enable row level security;
alter table profileguard.event_totals enable row level security;
alter table profileguard.stats_samples enable row level security;
alter table profileguard.alert_state enable row level security;
alter table profileguard.invariant_scan enable row level security;
alter table profileguard.drift_state enable row level security;
alter table profileguard.drift_pass enable row level security;

create policy owner_only on profileguard.migrations as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.settings as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.events as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.repair_state as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.workers as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.breakers as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.catalog_seen as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.backfill_runs as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.replaced_triggers as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.kept_triggers as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.counters as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.missing_profiles as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.event_totals as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.stats_samples as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.alert_state as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.invariant_scan as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.drift_state as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.drift_pass as restrictive for all to public
    using (false) with check (false);

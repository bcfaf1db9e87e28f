-- profileguard schema, version 4: observability. Cheap figures at any table size, and alert state
-- (the functions that compute them: functions/observe.sql).

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

-- Users the last sweep (or a failure event) found without a profile; re-checked on every read.
create table profileguard.missing_profiles (
    user_id text primary key,
    first_seen_at timestamptz not null default now(),
    seen_at timestamptz not null default now()
);

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

alter table profileguard.counters enable row level security;
alter table profileguard.missing_profiles enable row level security;
alter table profileguard.event_totals enable row level security;
alter table profileguard.stats_samples enable row level security;
alter table profileguard.alert_state enable row level security;

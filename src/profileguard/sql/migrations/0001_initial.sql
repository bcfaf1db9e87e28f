-- profileguard schema, version 1: settings, the audit trail, failure categories.
-- Runs inside the install transaction, after `create schema profileguard`.

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

-- The audit trail: failures, repairs, backfills, manual ensures, configuration changes.
-- Never a row per successful signup.
create table profileguard.events (
    id bigint generated always as identity primary key,
    created_at timestamptz not null default now(),
    kind text not null check (kind in ('failure', 'repair', 'backfill', 'config', 'quarantine')),
    source text not null,
    user_id text,
    sqlstate text check (sqlstate is null or sqlstate ~ '^[0-9A-Z]{5}$'),
    category text,
    message text,
    detail jsonb
);
create index events_created_at_idx on profileguard.events (created_at);
create index events_user_idx on profileguard.events (user_id, created_at) where user_id is not null;
create index events_failure_idx on profileguard.events (created_at) where kind = 'failure';

create view profileguard.failures as
    select id, created_at, source, user_id, sqlstate, category, message, detail
    from profileguard.events
    where kind = 'failure';

alter table profileguard.settings enable row level security;
alter table profileguard.events enable row level security;
alter table profileguard.migrations enable row level security;

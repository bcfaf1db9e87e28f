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

-- SQLSTATE → a category an operator can act on.
create function profileguard.sqlstate_category(p_sqlstate text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
    select case
        when p_sqlstate is null then 'other'
        when p_sqlstate in ('40001', '40P01', '55P03', '53300', '57014')
            or left(p_sqlstate, 2) in ('08', '57') then 'transient'
        when p_sqlstate = '42501' or left(p_sqlstate, 2) = '28' then 'permission'
        when p_sqlstate in ('42P01', '42883', '42703', '3F000', '42704') then 'missing_object'
        when left(p_sqlstate, 2) = '23' then 'constraint'
        when left(p_sqlstate, 2) = '22' then 'data'
        else 'other'
    end
$$;

-- Record one failure per user; used by clients whose own ensure call failed.
create function profileguard.record_failure(
    p_user_id text,
    p_sqlstate text,
    p_message text,
    p_source text default 'client'
)
returns void
language sql
security definer
set search_path = ''
as $$
    insert into profileguard.events (kind, source, user_id, sqlstate, category, message)
    values ('failure', p_source, p_user_id, p_sqlstate,
            profileguard.sqlstate_category(p_sqlstate), left(p_message, 2000));
$$;

-- profileguard schema, version 15: self-healing. Failures get a fingerprint (SQLSTATE + the object
-- they name); a fault that fails every user opens a breaker on its fingerprint instead of being
-- charged to each user; quarantine is retried on a slow cadence; a change to the profile table's
-- catalog (or profileguard's own functions) releases whoever waits.
-- Runs inside the install transaction. Nothing here is granted to anyone (see privileges.sql).
-- (Numbered after the issue that asked for it: migrations may land in any order.)

-- fingerprint: the last failure's fingerprint; waiting_on: the open breaker holding this user back
-- (its attempts are not counted while it waits, and it is never quarantined for it).
alter table profileguard.repair_state
    add column fingerprint text,
    add column waiting_on text;
create index repair_state_waiting_idx on profileguard.repair_state (waiting_on)
    where waiting_on is not null;
create index repair_state_fingerprint_idx on profileguard.repair_state (fingerprint, updated_at)
    where fingerprint is not null;

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
    changed_at timestamptz
);
insert into profileguard.catalog_seen default values;

alter table profileguard.events drop constraint events_kind_check;
alter table profileguard.events add constraint events_kind_check
    check (kind in ('failure', 'repair', 'backfill', 'config', 'quarantine', 'prune', 'breaker'));

alter table profileguard.breakers enable row level security;
alter table profileguard.catalog_seen enable row level security;

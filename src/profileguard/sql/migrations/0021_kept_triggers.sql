-- profileguard schema, version 21: triggers `install --keep-trigger` left beside profileguard.
-- Runs inside the install transaction. install refuses to run beside a trigger on the identity
-- table that also creates profiles unless told to take over from it (--replace-trigger) or to keep
-- it (--keep-trigger): a kept one is recorded here, so that installing again does not ask again
-- and audit reports it as kept (a warning) instead of competing. Nothing here is restored by
-- uninstall: a kept trigger was never changed.
create table profileguard.kept_triggers (
    table_name text not null,
    trigger_name text not null,
    function_name text not null,
    kept_at timestamptz not null default now(),
    primary key (table_name, trigger_name)
);

alter table profileguard.kept_triggers enable row level security;
create policy owner_only on profileguard.kept_triggers as restrictive for all to public
    using (false) with check (false);

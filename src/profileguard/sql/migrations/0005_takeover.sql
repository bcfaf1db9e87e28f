-- profileguard schema, version 5: triggers that `install --replace-trigger` disabled.
-- Runs inside the install transaction. `uninstall` re-enables each trigger listed here (in the
-- mode it had) before it drops the schema, so taking over from an existing profile-creating
-- trigger can be undone.
create table profileguard.replaced_triggers (
    table_name text not null,
    trigger_name text not null,
    function_name text not null,
    previous_mode text not null check (previous_mode in ('O', 'A', 'R')),
    replaced_at timestamptz not null default now(),
    primary key (table_name, trigger_name)
);

alter table profileguard.replaced_triggers enable row level security;

-- profileguard schema, version 7: take over from a legacy trigger without owning the users table.
-- Runs inside the install transaction. `install --replace-trigger` no longer disables the trigger
-- (ALTER TABLE needs the table's owner, which hosted Supabase's `postgres` is not): it replaces
-- the body of the trigger's own function with a no-op ('function'), or re-creates the trigger
-- with WHEN (false) ('never_fires'). `saved_definition` is what `uninstall` runs to restore it:
-- pg_get_functiondef() or pg_get_triggerdef() with an empty search_path, so names are qualified.
-- Rows from version 5 ('disabled') are restored by re-creating the trigger as it is now.
alter table profileguard.replaced_triggers
    add column method text not null default 'disabled'
        check (method in ('disabled', 'function', 'never_fires')),
    add column saved_definition text;

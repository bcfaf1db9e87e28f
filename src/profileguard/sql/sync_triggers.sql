-- The UPDATE triggers on the identity table (sync.sql has their functions). Run by install in
-- its short transaction with a lock_timeout: creating a trigger locks the identity table
-- against the UPDATE every login makes.
create or replace trigger profileguard_after_update_row
    after update of {watched} on {identity}
    for each row
    when ((
            {when_changed}
          ) and pg_catalog.set_config('profileguard.sync',
        case when coalesce(pg_catalog.current_setting('profileguard.sync', true), '') = '*'
                  or pg_catalog.length(pg_catalog.current_setting('profileguard.sync', true))
                     > {queue_chars}
             then '*'
             else coalesce(pg_catalog.current_setting('profileguard.sync', true), '') || ','
                  || {queued_key} end,
        true) is null)
    execute function profileguard.on_identity_update_row();

create or replace trigger profileguard_after_update
    after update of {watched} on {identity}
    for each statement
    when (pg_catalog.current_setting('profileguard.sync', true) <> '')
    execute function profileguard.on_identity_update();

create or replace trigger profileguard_after_insert after insert on {identity}
    referencing new table as pg_new_users for each statement
    execute function profileguard.on_identity_insert()

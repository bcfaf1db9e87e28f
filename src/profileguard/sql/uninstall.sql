-- Removes every profileguard object; the profile table and the user data stay. Runs in a short
-- transaction with a lock_timeout: dropping profileguard's trigger locks the identity table.
-- The trigger goes first (with its function; no ownership of the table needed), so that this
-- transaction locks the identity table before profileguard's tables, in the order a sign-up does
-- (insert into the users table, then the trigger writes profileguard's tables): the other order
-- could deadlock with a sign-up in flight.
drop function if exists profileguard.on_identity_insert() cascade;
drop function if exists profileguard.on_identity_update_row() cascade;
drop function if exists profileguard.on_identity_update() cascade;
do $pg$
begin
    -- the sweep scheduled by `install --schedule pg_cron`, if any
    if pg_catalog.to_regclass('cron.job') is not null then
        perform cron.unschedule(j.jobid) from cron.job j
        where j.jobname in ('profileguard-sweep', 'profileguard-reconcile');
    end if;
end
$pg$;
drop schema if exists profileguard cascade;

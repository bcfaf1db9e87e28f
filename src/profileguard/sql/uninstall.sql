-- Removes every profileguard object; the profile table and the user data stay. Dropping the
-- schema drops profileguard's trigger on the identity table with it (no ownership of that table
-- needed), so this runs in a short transaction with a lock_timeout.
do $pg$
begin
    -- the sweep scheduled by `install --schedule pg_cron`, if any
    if pg_catalog.to_regclass('cron.job') is not null then
        perform cron.unschedule(j.jobid) from cron.job j where j.jobname = 'profileguard-reconcile';
    end if;
end
$pg$;
drop schema if exists profileguard cascade;

-- Removes every profileguard object; the profile table and the user data stay.
drop trigger if exists {trigger} on {identity};
drop trigger if exists profileguard_after_update_row on {identity};
drop trigger if exists profileguard_after_update on {identity};
do $pg$
begin
    -- the sweep scheduled by `install --schedule pg_cron`, if any
    if pg_catalog.to_regclass('cron.job') is not null then
        perform cron.unschedule(j.jobid) from cron.job j where j.jobname = 'profileguard-reconcile';
    end if;
end
$pg$;
drop schema if exists profileguard cascade;

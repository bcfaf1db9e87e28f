-- Takes the locks the statements after it need with one LOCK TABLE, each try waiting at most {try_timeout}
-- (sign-ins queue behind a lock request) and holding nothing during its random pause of up to {cap_seconds} s;
-- after {retry_seconds} s in all it stops with SQLSTATE 55P03 and the whole file is rolled back.
do $pg$
declare
    v_lock_timeout text := pg_catalog.current_setting('lock_timeout');
    v_deadline timestamptz := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => {retry_seconds});
    v_tries integer := 0;
    v_pause double precision;
begin
    perform pg_catalog.set_config('lock_timeout', {try_timeout}, true);
    loop
        begin
            lock table {tables}
                in {mode} mode;
            exit;
        exception when lock_not_available or deadlock_detected then
            v_tries := v_tries + 1;
            v_pause := pg_catalog.random() * least({cap_seconds}, {base_seconds} * 2.0 ^ least(v_tries, 30));
            if pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => v_pause) > v_deadline then
                raise exception using
                    errcode = 'lock_not_available',
                    message = format('profileguard: could not lock %s within %s s (%s tries of %s each): a '
                                     'long transaction holds it; nothing was changed',
                                     {names},
                                     {retry_seconds}, v_tries, {try_timeout}),
                    hint = 'find it with: select pid, xact_start, state, query from pg_stat_activity where '
                           'xact_start < now() - interval ''1 minute''; then apply this file again';
            end if;
            perform pg_catalog.pg_sleep(v_pause);
        end;
    end loop;
    perform pg_catalog.set_config('lock_timeout', v_lock_timeout, true);
end
$pg$

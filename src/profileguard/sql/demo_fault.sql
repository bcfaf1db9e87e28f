-- The demo's injected fault: the profile insert of a sign-up whose transaction set
-- demo.fault = on fails with a lock timeout (55P03), as it would behind a long lock.
create function public.demo_fault()
returns trigger
language plpgsql
as $$
begin
    if current_setting('demo.fault', true) = 'on' then
        raise exception using errcode = '55P03',
            message = 'canceling statement due to lock timeout (injected by the demo)';
    end if;
    return new;
end;
$$;
create trigger demo_fault before insert on public.profiles
    for each row execute function public.demo_fault();

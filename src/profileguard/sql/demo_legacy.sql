-- The demo's "before": Supabase's User Management Starter profile table and the documented
-- per-row trigger. Any error in handle_new_user() aborts the sign-up.
create table public.profiles (
    id uuid not null references auth.users primary key,
    updated_at timestamptz,
    username text unique,
    full_name text,
    avatar_url text,
    website text,
    constraint username_length check (char_length(username) >= 3)
);
alter table public.profiles enable row level security;
create policy "Public profiles are viewable by everyone." on public.profiles
    for select using (true);
create policy "Users can update own profile." on public.profiles
    for update using ((select auth.uid()) = id);

create function public.handle_new_user()
returns trigger
language plpgsql
security definer set search_path = ''
as $$
begin
    insert into public.profiles (id, full_name, avatar_url, username)
    values (new.id, new.raw_user_meta_data ->> 'full_name', new.raw_user_meta_data ->> 'avatar_url',
            new.raw_user_meta_data ->> 'user_name');
    return new;
end;
$$;
create trigger on_auth_user_created
    after insert on auth.users
    for each row execute procedure public.handle_new_user();

-- A Supabase-style profile table, created by `install --create-profile-table` when none exists.
create table {profile} (
    {profile_key} {key_type} primary key
        references {identity} ({identity_key}) on delete cascade,
    username text unique check (char_length(username) >= 3),
    full_name text,
    avatar_url text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
alter table {profile} enable row level security;

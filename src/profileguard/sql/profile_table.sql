-- A Supabase-style profile table, created by `install --create-profile-table` when none exists.
-- Its foreign key to the identity table is added by profile_foreign_key.sql, later, in the short
-- transaction that touches the identity table (adding it locks that table).
create table {profile} (
    {profile_key} {key_type} primary key,
    username text unique check (char_length(username) >= 3),
    full_name text,
    avatar_url text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
alter table {profile} enable row level security;

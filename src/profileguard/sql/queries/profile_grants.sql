-- Explicit grants on the profile table `install --create-profile-table` makes, whatever the
-- schema's default privileges say (Supabase's granted ALL to the API roles: TRUNCATE, TRIGGER,
-- REFERENCES and, from PostgreSQL 17, MAINTAIN included; from 30 Oct 2026 they grant nothing).
-- Each statement names one role and runs only when that role exists. anon gets nothing: profiles
-- hold names and avatars and no policy lets anon read them. authenticated reads and updates its
-- own row (profile_policies.sql), only the columns a user chooses; profileguard creates the rows.
-- Not username: a name a client writes would skip the username policy (reserved names, cleaning,
-- length); users change it through the app's server or their metadata.
-- service_role (the server's key, BYPASSRLS) reads and writes rows, and nothing more.

-- name: public
revoke all on {profile} from public

-- name: anon
revoke all on {profile} from anon

-- name: authenticated
revoke all on {profile} from authenticated;
grant select on {profile} to authenticated;
grant update (full_name, avatar_url, updated_at) on {profile} to authenticated

-- name: service_role
revoke all on {profile} from service_role;
grant select, insert, update, delete on {profile} to service_role

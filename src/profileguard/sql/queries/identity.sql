-- Named queries of the Supabase-shaped identity backend (profileguard.identity), in the order
-- Supabase Auth runs them for one sign-up: the user with an empty role, the role set by UPDATE,
-- then the identity row, all in one transaction. Users come back as jsonb, like profiles.
-- Token columns are '' and never NULL: Supabase Auth cannot read a user whose tokens are NULL
-- ("converting NULL to string is unsupported").

-- name: insert_user
insert into auth.users (
    instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
    confirmation_token, recovery_token, email_change_token_new, email_change,
    raw_app_meta_data, raw_user_meta_data, is_super_admin, is_sso_user, is_anonymous,
    last_sign_in_at, created_at, updated_at
) values (
    '00000000-0000-0000-0000-000000000000', %(id)s, 'authenticated', '', %(email)s,
    %(password_hash)s, case when %(confirmed)s then now() end,
    '', '', '', '',
    %(app_meta)s, %(user_meta)s, false, false, %(anonymous)s,
    case when %(signed_in)s then now() end, now(), now()
)

-- name: set_role
with u as (
    update auth.users set role = 'authenticated'
    where id = %(id)s
    returning id, aud, role, email, email_confirmed_at, phone, is_anonymous, is_sso_user,
              raw_app_meta_data, raw_user_meta_data, last_sign_in_at, created_at, updated_at
)
select to_jsonb(u) as "user" from u

-- name: insert_identity
insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at,
                             created_at, updated_at)
values (%(provider_id)s, %(id)s, %(identity_data)s, %(provider)s,
        case when %(signed_in)s then now() end, now(), now())

-- name: user_by_id
select to_jsonb(u) as "user" from (
    select id, aud, role, email, email_confirmed_at, phone, is_anonymous, is_sso_user,
           raw_app_meta_data, raw_user_meta_data, last_sign_in_at, created_at, updated_at
    from auth.users
    where id = %(id)s
) u

-- name: user_by_email
select to_jsonb(u) as "user" from (
    select id, aud, role, email, email_confirmed_at, phone, is_anonymous, is_sso_user,
           raw_app_meta_data, raw_user_meta_data, last_sign_in_at, created_at, updated_at
    from auth.users
    where lower(email) = lower(%(email)s) and not is_sso_user
    order by created_at
    limit 1
) u

-- name: user_by_identity
select to_jsonb(u) as "user" from (
    select u.id, u.aud, u.role, u.email, u.email_confirmed_at, u.phone, u.is_anonymous,
           u.is_sso_user, u.raw_app_meta_data, u.raw_user_meta_data, u.last_sign_in_at,
           u.created_at, u.updated_at
    from auth.identities i
    join auth.users u on u.id = i.user_id
    where i.provider = %(provider)s and i.provider_id = %(provider_id)s
) u

-- name: record_failure_once
-- One failure row for a registration whose profile could not be created, unless the trigger
-- already recorded one for this user in the same transaction.
select profileguard.record_failure(%(user_id)s, %(sqlstate)s, %(message)s, %(source)s)
where not exists (
    select from profileguard.events e
    where e.kind = 'failure' and e.user_id = %(user_id)s and e.created_at = now()
)

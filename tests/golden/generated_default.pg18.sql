-- The functions and trigger `profileguard install --create-profile-table` generates for the
-- default configuration on Supabase's auth.users. Rewritten by `make golden`; checked by
-- tests/test_golden.py.

-- Functions generated from the configured mapping; rendered with psycopg.sql at install time.
-- The insert_* placeholders are the INSERT … SELECT statements mapping/insert.py builds (formatted
-- by pglast's prettifier); identity, profile and the keys are quoted identifiers.

-- The mapping's constants (mapping/constants.py): immutable and without arguments, each call is folded
-- into the plans as its value, so a row pays nothing for it; replacing one re-plans them.
create or replace function profileguard.reserved_names()
returns pg_catalog.text[]
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select array[
        'abuse', 'admin', 'administrator', 'anon', 'anonymous', 'api', 'authenticated', 'billing', 'contact',
        'everyone', 'ftp', 'guest', 'help', 'helpdesk', 'hostmaster', 'info', 'mail', 'me', 'mod', 'moderator',
        'no-reply', 'noreply', 'null', 'official', 'owner', 'postgres', 'postmaster', 'root', 'security',
        'service_role', 'staff', 'supabase', 'superuser', 'support', 'sysadmin', 'system', 'team', 'undefined',
        'webmaster', 'www', 'you'
    ]::pg_catalog.text[]
$pg$;

create or replace function profileguard.unverified_providers()
returns pg_catalog.text[]
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select array[
        'anonymous', 'email', 'phone'
    ]::pg_catalog.text[]
$pg$;

-- Characters a username never keeps: controls, format characters, line and paragraph separators.
create or replace function profileguard.invisible_characters()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select pg_catalog.translate($re$
    [\x1-\x1f\x7f-\x9f\xad\x600-\x605\x61c\x6dd\x70f\x890-\x891\x8e2\x180e\x200b-\x200f\x2028-\x202e\x2060-\x2064
    \x2066-\x206f\xfeff\xfff9-\xfffb\x110bd\x110cd\x13430-\x13438\x1bca0-\x1bca3\x1d173-\x1d17a\xe0001
    \xe0020-\xe007f]
    $re$, E' \n', '')
$pg$;

-- Space separators at either end of a name.
create or replace function profileguard.edge_spaces()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select pg_catalog.translate($re$
    ^[\x20\xa0\x1680\x2000-\x200a\x202f\x205f\x3000]+|[\x20\xa0\x1680\x2000-\x200a\x202f\x205f\x3000]+$
    $re$, E' \n', '')
$pg$;

-- Names left to the rare path: a JSON array or object printed as text, or nothing cleaning keeps.
create or replace function profileguard.rare_names()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select pg_catalog.translate($re$
    ^[{[]|^[\x1-\x20\x7f-\xa0\xad\x600-\x605\x61c\x6dd\x70f\x890-\x891\x8e2\x1680\x180e\x2000-\x200f\x2028-\x202f
    \x205f-\x2064\x2066-\x206f\x3000\xfeff\xfff9-\xfffb\x110bd\x110cd\x13430-\x13438\x1bca0-\x1bca3\x1d173-\x1d17a
    \xe0001\xe0020-\xe007f]+$
    $re$, E' \n', '')
$pg$;

-- Combining marks: removed from a decomposed name before it is compared with the reserved names.
create or replace function profileguard.combining_marks()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select pg_catalog.translate($re$
    [\x300-\x36f\x483-\x489\x591-\x5bd\x5bf\x5c1-\x5c2\x5c4-\x5c5\x5c7\x610-\x61a\x64b-\x65f\x670\x6d6-\x6dc
    \x6df-\x6e4\x6e7-\x6e8\x6ea-\x6ed\x711\x730-\x74a\x7a6-\x7b0\x7eb-\x7f3\x7fd\x816-\x819\x81b-\x823\x825-\x827
    \x829-\x82d\x859-\x85b\x898-\x89f\x8ca-\x8e1\x8e3-\x903\x93a-\x93c\x93e-\x94f\x951-\x957\x962-\x963\x981-\x983
    \x9bc\x9be-\x9c4\x9c7-\x9c8\x9cb-\x9cd\x9d7\x9e2-\x9e3\x9fe\xa01-\xa03\xa3c\xa3e-\xa42\xa47-\xa48\xa4b-\xa4d
    \xa51\xa70-\xa71\xa75\xa81-\xa83\xabc\xabe-\xac5\xac7-\xac9\xacb-\xacd\xae2-\xae3\xafa-\xaff\xb01-\xb03\xb3c
    \xb3e-\xb44\xb47-\xb48\xb4b-\xb4d\xb55-\xb57\xb62-\xb63\xb82\xbbe-\xbc2\xbc6-\xbc8\xbca-\xbcd\xbd7\xc00-\xc04
    \xc3c\xc3e-\xc44\xc46-\xc48\xc4a-\xc4d\xc55-\xc56\xc62-\xc63\xc81-\xc83\xcbc\xcbe-\xcc4\xcc6-\xcc8\xcca-\xccd
    \xcd5-\xcd6\xce2-\xce3\xd00-\xd03\xd3b-\xd3c\xd3e-\xd44\xd46-\xd48\xd4a-\xd4d\xd57\xd62-\xd63\xd81-\xd83\xdca
    \xdcf-\xdd4\xdd6\xdd8-\xddf\xdf2-\xdf3\xe31\xe34-\xe3a\xe47-\xe4e\xeb1\xeb4-\xebc\xec8-\xecd\xf18-\xf19\xf35
    \xf37\xf39\xf3e-\xf3f\xf71-\xf84\xf86-\xf87\xf8d-\xf97\xf99-\xfbc\xfc6\x102b-\x103e\x1056-\x1059\x105e-\x1060
    \x1062-\x1064\x1067-\x106d\x1071-\x1074\x1082-\x108d\x108f\x109a-\x109d\x135d-\x135f\x1712-\x1715\x1732-\x1734
    \x1752-\x1753\x1772-\x1773\x17b4-\x17d3\x17dd\x180b-\x180d\x180f\x1885-\x1886\x18a9\x1920-\x192b\x1930-\x193b
    \x1a17-\x1a1b\x1a55-\x1a5e\x1a60-\x1a7c\x1a7f\x1ab0-\x1ace\x1b00-\x1b04\x1b34-\x1b44\x1b6b-\x1b73\x1b80-\x1b82
    \x1ba1-\x1bad\x1be6-\x1bf3\x1c24-\x1c37\x1cd0-\x1cd2\x1cd4-\x1ce8\x1ced\x1cf4\x1cf7-\x1cf9\x1dc0-\x1dff
    \x20d0-\x20f0\x2cef-\x2cf1\x2d7f\x2de0-\x2dff\x302a-\x302f\x3099-\x309a\xa66f-\xa672\xa674-\xa67d\xa69e-\xa69f
    \xa6f0-\xa6f1\xa802\xa806\xa80b\xa823-\xa827\xa82c\xa880-\xa881\xa8b4-\xa8c5\xa8e0-\xa8f1\xa8ff\xa926-\xa92d
    \xa947-\xa953\xa980-\xa983\xa9b3-\xa9c0\xa9e5\xaa29-\xaa36\xaa43\xaa4c-\xaa4d\xaa7b-\xaa7d\xaab0\xaab2-\xaab4
    \xaab7-\xaab8\xaabe-\xaabf\xaac1\xaaeb-\xaaef\xaaf5-\xaaf6\xabe3-\xabea\xabec-\xabed\xfb1e\xfe00-\xfe0f
    \xfe20-\xfe2f\x101fd\x102e0\x10376-\x1037a\x10a01-\x10a03\x10a05-\x10a06\x10a0c-\x10a0f\x10a38-\x10a3a\x10a3f
    \x10ae5-\x10ae6\x10d24-\x10d27\x10eab-\x10eac\x10f46-\x10f50\x10f82-\x10f85\x11000-\x11002\x11038-\x11046\x11070
    \x11073-\x11074\x1107f-\x11082\x110b0-\x110ba\x110c2\x11100-\x11102\x11127-\x11134\x11145-\x11146\x11173
    \x11180-\x11182\x111b3-\x111c0\x111c9-\x111cc\x111ce-\x111cf\x1122c-\x11237\x1123e\x112df-\x112ea\x11300-\x11303
    \x1133b-\x1133c\x1133e-\x11344\x11347-\x11348\x1134b-\x1134d\x11357\x11362-\x11363\x11366-\x1136c\x11370-\x11374
    \x11435-\x11446\x1145e\x114b0-\x114c3\x115af-\x115b5\x115b8-\x115c0\x115dc-\x115dd\x11630-\x11640\x116ab-\x116b7
    \x1171d-\x1172b\x1182c-\x1183a\x11930-\x11935\x11937-\x11938\x1193b-\x1193e\x11940\x11942-\x11943\x119d1-\x119d7
    \x119da-\x119e0\x119e4\x11a01-\x11a0a\x11a33-\x11a39\x11a3b-\x11a3e\x11a47\x11a51-\x11a5b\x11a8a-\x11a99
    \x11c2f-\x11c36\x11c38-\x11c3f\x11c92-\x11ca7\x11ca9-\x11cb6\x11d31-\x11d36\x11d3a\x11d3c-\x11d3d\x11d3f-\x11d45
    \x11d47\x11d8a-\x11d8e\x11d90-\x11d91\x11d93-\x11d97\x11ef3-\x11ef6\x16af0-\x16af4\x16b30-\x16b36\x16f4f
    \x16f51-\x16f87\x16f8f-\x16f92\x16fe4\x16ff0-\x16ff1\x1bc9d-\x1bc9e\x1cf00-\x1cf2d\x1cf30-\x1cf46\x1d165-\x1d169
    \x1d16d-\x1d172\x1d17b-\x1d182\x1d185-\x1d18b\x1d1aa-\x1d1ad\x1d242-\x1d244\x1da00-\x1da36\x1da3b-\x1da6c\x1da75
    \x1da84\x1da9b-\x1da9f\x1daa1-\x1daaf\x1e000-\x1e006\x1e008-\x1e018\x1e01b-\x1e021\x1e023-\x1e024\x1e026-\x1e02a
    \x1e130-\x1e136\x1e2ae\x1e2ec-\x1e2ef\x1e8d0-\x1e8d6\x1e944-\x1e94a\xe0100-\xe01ef]
    $re$, E' \n', '')
$pg$;

-- Unicode TR39 confusables of the reserved names' characters: translate() replaces each character
-- of confusable_characters() by the one at its place in confusable_prototypes().
create or replace function profileguard.confusable_characters()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select E'01|\u0131\u0184\u018d\u0196\u01a6\u01bd\u01c0\u0251\u0261\u0263\u0269\u026a\u026f\u028b\u028f\u02d7\u0391'
    || E'\u0392\u0395\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03b1\u03b3\u03b9\u03bd\u03bf\u03c1'
    || E'\u03c3\u03c5\u03dc\u03fa\u0405\u0406\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0423'
    || E'\u042c\u0430\u0433\u0435\u043e\u0440\u0441\u0443\u0455\u0456\u0461\u0474\u0475\u04ae\u04af\u04bb\u04bd'
    || E'\u04c0\u04cf\u0501\u050c\u051c\u051d\u054d\u054f\u0555\u0561\u0570\u0578\u057c\u057d\u0581\u0584\u0585'
    || E'\u05c0\u05d5\u05d8\u05df\u05e1\u0627\u0647\u0661\u0665\u0667\u06be\u06c1\u06d4\u06d5\u06f1\u06f5\u06f7'
    || E'\u07c0\u07ca\u07fa\u0966\u09e6\u0a66\u0ae6\u0b20\u0b66\u0be6\u0c66\u0ce6\u0d20\u0d66\u0e50\u0ed0\u101d'
    || E'\u1040\u10e7\u10ff\u1200\u12d0\u13a0\u13a1\u13a2\u13a5\u13a9\u13aa\u13ac\u13b3\u13b7\u13bb\u13bd\u13c0'
    || E'\u13c2\u13cf\u13d2\u13d4\u13d5\u13d9\u13da\u13de\u13df\u13e2\u13e6\u13e7\u13f3\u13f4\u142f\u144c\u146d'
    || E'\u146f\u1472\u14aa\u157c\u1587\u15af\u15b4\u15c5\u15de\u15ea\u15f0\u15f7\u16c1\u16d5\u16d6\u1d04\u1d0f'
    || E'\u1d11\u1d1c\u1d20\u1d21\u1d26\u1d83\u1d8c\u1e9d\u1eff\u2010\u2012\u2013\u2043\u212e\u2212\u2223\u2228'
    || E'\u222a\u22a4\u22c1\u22c3\u22ff\u2373\u2374\u237a\u23fd\u2796\u27d9\u2c85\u2c8e\u2c92\u2c94\u2c98\u2c9a'
    || E'\u2c9e\u2c9f\u2ca2\u2ca3\u2ca4\u2ca5\u2ca6\u2ca8\u2cba\u2cd0\u2d38\u2d39\u2d4f\u2d54\u3007\ua4d0\ua4d1'
    || E'\ua4d2\ua4d3\ua4d4\ua4d6\ua4d7\ua4da\ua4dd\ua4df\ua4e0\ua4e1\ua4e2\ua4e3\ua4e6\ua4e7\ua4ea\ua4ec\ua4ee'
    || E'\ua4f0\ua4f2\ua4f3\ua4f4\ua647\ua6df\ua731\ua798\ua799\ua79f\ua7b4\uab32\uab35\uab3d\uab47\uab48\uab4e'
    || E'\uab52\uab5a\uab75\uab81\uab83\uaba9\uabaa\uabaf\U00010282\U00010286\U00010287\U0001028a\U00010292'
    || E'\U00010295\U00010296\U00010297\U000102a0\U000102a1\U000102a2\U000102a5\U000102ab\U000102b0\U000102b1'
    || E'\U000102b2\U000102cf\U00010301\U00010302\U00010309\U00010311\U00010315\U00010320\U00010404\U00010415'
    || E'\U0001041b\U00010420\U0001042c\U0001043d\U00010448\U000104b4\U000104c2\U000104ce\U000104ea\U000104f6'
    || E'\U00010513\U00010516\U00010518\U0001051c\U0001051d\U00010525\U00010526\U000114d0\U00011706\U0001170a'
    || E'\U0001170e\U0001170f\U000118a0\U000118a2\U000118a3\U000118a4\U000118a6\U000118ae\U000118b2\U000118b5'
    || E'\U000118b8\U000118bc\U000118c0\U000118c1\U000118c2\U000118c3\U000118c8\U000118d7\U000118d8\U000118dc'
    || E'\U000118e0\U000118e6\U000118e9\U000118ef\U000118f2\U00016f08\U00016f0a\U00016f16\U00016f28\U00016f35'
    || E'\U00016f3a\U00016f40\U00016f42\U00016f43\U0001d20d\U0001d213\U0001d216\U0001d22a\U0001e8c7\U0001f74c'
    || E'\U0001f768'
$pg$;

create or replace function profileguard.confusable_prototypes()
returns pg_catalog.text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    select 'ollibglrslagyiiwuy-abehlkmnoptyayivopoufmslabekmhopctybareopcysiwvvyyhelidgwwusowhnnugfollvlololovoo-olovol'
    || '_oooooooooooooooyouodrtiyaewmhyghbrwsvslcpkdgbvupdblhrbfaddmblkmcoouvwrgyfy----e-lvutvueipal-trhlkmnooppcct'
    || 'y-lveloobpddtgkcfmnlsrvhwyaelouivsffubeforruuyirwvscbeflopstabcfomtyhbclmtloclsocsrouounokcvflovwwwvflyeelo'
    || 'utvsfioouyowcwcvtllrsauyvfrllct'
$pg$;

-- The username rule's rare paths. The statements call them only behind a cheap test (a name
-- that is not plain ASCII), so that a common sign-up sets up one call of each and runs neither.
-- Whether `p_name` is confusable with a reserved name: not plain ASCII, and its skeleton
-- (lowercased, NFKD, combining marks removed, confusable characters replaced) is a reserved
-- name's ('admin' with a Cyrillic a, U+0430).
create or replace function profileguard.reserved_confusable(p_name pg_catalog.text)
returns boolean
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    SELECT     $1 !~ '^[ -~]*$'
           AND translate(regexp_replace(normalize(lower($1 COLLATE pg_catalog.pg_unicode_fast), NFKD),
                                        profileguard.combining_marks(),
                                        '',
                                        'g'),
                         profileguard.confusable_characters(),
                         profileguard.confusable_prototypes()) = ANY(profileguard.reserved_names())
$pg$;

-- The username base of the user `p_key` when the name chosen first is one of rare_names(): each
-- source in turn, an array or an object passed over as no name, the first one not empty after
-- cleaning (NULL when none is).
create or replace function profileguard.username_base(p_key uuid)
returns pg_catalog.text
language sql
stable
parallel safe
set search_path = pg_catalog, pg_temp
as $pg$
    SELECT COALESCE(NULLIF(CASE
                             WHEN "left"(a.pg_n0, 272) ~ '^[!-~]([ -~]*[!-~])?$'
                               THEN "left"(a.pg_n0, 272)
                             ELSE regexp_replace(normalize(regexp_replace("left"(a.pg_n0, 272),
                                                                          profileguard.invisible_characters(),
                                                                          '',
                                                                          'g'), NFKC),
                                                 profileguard.edge_spaces(),
                                                 '',
                                                 'g')
                           END,
                           ''),
                    NULLIF(CASE
                             WHEN "left"(a.pg_n1, 272) ~ '^[!-~]([ -~]*[!-~])?$'
                               THEN "left"(a.pg_n1, 272)
                             ELSE regexp_replace(normalize(regexp_replace("left"(a.pg_n1, 272),
                                                                          profileguard.invisible_characters(),
                                                                          '',
                                                                          'g'), NFKC),
                                                 profileguard.edge_spaces(),
                                                 '',
                                                 'g')
                           END,
                           ''),
                    NULL)
    FROM (SELECT CASE
                   WHEN jsonb_typeof(u.raw_user_meta_data -> 'user_name') NOT IN ('array', 'object')
                     THEN NULLIF(btrim(u.raw_user_meta_data ->> 'user_name'), '')
                 END AS pg_n0,
                 CASE
                   WHEN jsonb_typeof(u.raw_user_meta_data -> 'preferred_username') NOT IN ('array', 'object')
                     THEN NULLIF(btrim(u.raw_user_meta_data ->> 'preferred_username'), '')
                 END AS pg_n1,
                 NULLIF(btrim(u.raw_app_meta_data ->> 'provider'), '') AS pg_provider
          FROM auth.users AS u
          WHERE u.id = $1) AS a
$pg$;

-- The profiles of the users `p_ids` that have none, by the mapping's full statement; returns their
-- keys. The repair engine, ensure_profile and the backfill come here. `p_forced`: a retry after a
-- unique violation (suffixed names looked up too). Index lookups only, no JIT (docs/internals.md).
create or replace function profileguard.insert_profiles(p_ids uuid[], p_forced boolean default false)
returns setof uuid
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
set random_page_cost = 1.1
set jit = off
as $pg$
#variable_conflict use_column
begin
    return query
    WITH pg_sources AS (
             SELECT u.id AS pg_key,
                    COALESCE(NULLIF(btrim(u.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                    ''),
                             NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                             NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')) AS pg_c0,
                    COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'avatar_url'), ''),
                             NULLIF(btrim(u.raw_user_meta_data ->> 'picture'), '')) AS pg_c1,
                    NULLIF(btrim(u.raw_user_meta_data ->> 'user_name'), '') AS pg_n0,
                    NULLIF(btrim(u.raw_user_meta_data ->> 'preferred_username'), '') AS pg_n1,
                    NULLIF(btrim(u.raw_app_meta_data ->> 'provider'), '') AS pg_provider
             FROM auth.users AS u
             WHERE u.id = ANY(p_ids)
             OFFSET 0
           ),
         pg_chosen AS (
             SELECT a.*, COALESCE(a.pg_n0, a.pg_n1, NULL) AS pg_raw
             FROM pg_sources AS a
             OFFSET 0
           ),
         pg_cleaned AS (
             SELECT a.*,
                    NULLIF(CASE
                             WHEN "left"(a.pg_raw, 272) ~ '^[!-Z^-z|-~]([ -~]*[!-~])?$'
                               THEN "left"(a.pg_raw, 272)
                             WHEN "left"(a.pg_raw, 272) ~ profileguard.rare_names()
                               THEN profileguard.username_base(a.pg_key)
                             ELSE regexp_replace(normalize(regexp_replace("left"(a.pg_raw, 272),
                                                                          profileguard.invisible_characters(),
                                                                          '',
                                                                          'g'), NFKC),
                                                 profileguard.edge_spaces(),
                                                 '',
                                                 'g')
                           END,
                           '') AS pg_base,
                    CASE
                      WHEN a.pg_provider IS NULL
                        THEN COALESCE(a.pg_n0, a.pg_n1) IS NOT NULL
                      WHEN a.pg_provider IS NOT NULL
                       AND a.pg_provider <> ALL(profileguard.unverified_providers())
                        THEN COALESCE(a.pg_n0, a.pg_n1) IS NOT NULL
                      ELSE FALSE
                    END AS pg_trusted
             FROM pg_chosen AS a
             OFFSET 0
           ),
         pg_plain AS (
             SELECT b.*,
                    rtrim("left"(b.pg_base, 64), '  ') AS pg_plain,
                    md5(CAST(b.pg_key AS text)) AS pg_hash
             FROM pg_cleaned AS b
             OFFSET 0
           ),
         pg_tested AS (
             SELECT b.*,
                        b.pg_trusted
                    AND NOT(lower(b.pg_plain COLLATE pg_catalog.pg_unicode_fast) = ANY(profileguard.reserved_names())
                         OR (b.pg_plain !~ '^[!-Z^-z|-~]([ -~]*[!-~])?$'
                         AND profileguard.reserved_confusable(b.pg_plain)))
                    AND (char_length(b.pg_plain) BETWEEN 3 AND 64
                     AND COALESCE(char_length(b.pg_plain) >= 3, TRUE))
                    AND NOT EXISTS (SELECT
                                    FROM public.profiles AS x
                                    WHERE username = b.pg_plain) AS pg_free,
                    "left"(b.pg_base, 55) || '_' || "left"(b.pg_hash, 8) AS pg_suffixed
             FROM pg_plain AS b
             OFFSET 0
           )
      INSERT INTO public.profiles (id, full_name, avatar_url, username)
      SELECT c.pg_key,
             CAST(c.pg_c0 AS text),
             CAST(c.pg_c1 AS text),
             CASE
               WHEN c.pg_base IS NULL
                 THEN NULL
               WHEN c.pg_free
                AND row_number() OVER (PARTITION BY c.pg_free, c.pg_plain
                                       ORDER BY c.pg_key) = 1
                 THEN c.pg_plain
               WHEN char_length(c.pg_suffixed) BETWEEN 3 AND 64
                AND COALESCE(char_length(c.pg_suffixed) >= 3, TRUE)
                AND (NOT p_forced
                  OR NOT EXISTS (SELECT
                                 FROM public.profiles AS x
                                 WHERE username = c.pg_suffixed))
                 THEN c.pg_suffixed
               WHEN char_length('user_' || "left"(c.pg_hash, 8)) BETWEEN 3 AND 64
                AND COALESCE(char_length('user_' || "left"(c.pg_hash, 8)) >= 3, TRUE)
                AND (NOT p_forced
                  OR NOT EXISTS (SELECT
                                 FROM public.profiles AS x
                                 WHERE username = 'user_' || "left"(c.pg_hash, 8)))
                 THEN 'user_' || "left"(c.pg_hash, 8)
               WHEN char_length('user_' || "left"(c.pg_hash, 16)) BETWEEN 3 AND 64
                AND COALESCE(char_length('user_' || "left"(c.pg_hash, 16)) >= 3, TRUE)
                AND (NOT p_forced
                  OR NOT EXISTS (SELECT
                                 FROM public.profiles AS x
                                 WHERE username = 'user_' || "left"(c.pg_hash, 16)))
                 THEN 'user_' || "left"(c.pg_hash, 16)
               ELSE NULL
             END
      FROM pg_tested AS c
      ON CONFLICT (id) DO NOTHING
      RETURNING id;
end
$pg$;

-- The sign-up trigger: one set-based INSERT per statement on the identity table, in one exception
-- block: on error one failure row per new user and a notification, and the sign-up commits (unless
-- strict mode is on). A unique violation is retried once, the rows that collide given suffixed names.
-- Why each setting and step is there: docs/internals.md, "The sign-up trigger".
create or replace function profileguard.on_identity_insert()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
set enable_seqscan = off
set lock_timeout = '125ms'
as $pg$
declare
    v_strict boolean := false;
    v_retry boolean := false;
    v_work_mem text;
    v_state text;
    v_message text;
    v_detail text;
    v_schema text;
    v_table text;
    v_column text;
    v_constraint text;
    v_datatype text;
    v_count bigint;
begin
    -- The first try, and once more after a unique violation: the rows whose key or name is taken
    -- are left out by ON CONFLICT and only those get the collision path (suffixed names, looked up).
    loop
        begin
            if not v_retry then
                -- The settings row's flags, folded into this plan as constants (profileguard.write_flags).
                if not profileguard.trigger_enabled() then
                    return null;
                end if;
                WITH pg_sources AS (
                         SELECT u.id AS pg_key,
                                u.raw_user_meta_data,
                                NULLIF(btrim(u.raw_user_meta_data ->> 'user_name'), '') AS pg_n0,
                                NULLIF(btrim(u.raw_user_meta_data ->> 'preferred_username'), '') AS pg_n1,
                                NULLIF(btrim(u.raw_app_meta_data ->> 'provider'), '') AS pg_provider
                         FROM pg_new_users AS u
                         OFFSET 0
                       )
                  INSERT INTO public.profiles (id, full_name, avatar_url, username)
                  SELECT a.pg_key,
                         CAST(COALESCE(NULLIF(btrim(a.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                              ''),
                                       NULLIF(btrim(a.raw_user_meta_data ->> 'full_name'), ''),
                                       NULLIF(btrim(a.raw_user_meta_data ->> 'name'), '')) AS text),
                         CAST(COALESCE(NULLIF(btrim(a.raw_user_meta_data ->> 'avatar_url'), ''),
                                       NULLIF(btrim(a.raw_user_meta_data ->> 'picture'), '')) AS text),
                         CASE
                           WHEN COALESCE(a.pg_n0, a.pg_n1, NULL) IS NULL
                             THEN NULL
                           WHEN CASE
                                  WHEN a.pg_provider IS NULL
                                    THEN COALESCE(a.pg_n0, a.pg_n1) IS NOT NULL
                                  WHEN a.pg_provider IS NOT NULL
                                   AND a.pg_provider <> ALL(profileguard.unverified_providers())
                                    THEN COALESCE(a.pg_n0, a.pg_n1) IS NOT NULL
                                  ELSE FALSE
                                END
                            AND NOT lower(COALESCE(a.pg_n0, a.pg_n1, NULL) COLLATE "C") =
                                ANY(profileguard.reserved_names())
                            AND char_length(COALESCE(a.pg_n0, a.pg_n1, NULL)) >= 3
                             THEN COALESCE(a.pg_n0, a.pg_n1, NULL)
                           ELSE "left"(COALESCE(a.pg_n0, a.pg_n1, NULL), 55) || '_' || "left"(md5(CAST(a.pg_key AS
                               text)),
                                                                                              8)
                         END
                  FROM pg_sources AS a
                  WHERE COALESCE(a.pg_n0, a.pg_n1, NULL) IS NULL
                     OR (COALESCE(a.pg_n0, a.pg_n1, NULL) ~ '^[!-Z^-z|-~]([ -~]*[!-~])?$'
                     AND octet_length(COALESCE(a.pg_n0, a.pg_n1, NULL)) <= 64)
                     OR pg_catalog.set_config('profileguard.username_rule', 'on', TRUE) IS NULL;
            else
                -- The failure path's shorter lock waits (the SET clause above restores lock_timeout
                -- when the function returns) and more work_mem, put back below; both local to the
                -- transaction, and undone with this block on error.
                perform pg_catalog.set_config('lock_timeout', '16ms', true);
                v_work_mem := pg_catalog.current_setting('work_mem');
                perform pg_catalog.set_config('work_mem', '64MB', true);
                perform pg_catalog.set_config('profileguard.username_rule', 'all', true);
            end if;
            -- The names the lean insert left to the username rule (its WHERE turned the flag on)
            -- or, on the retry, all.
            if pg_catalog.current_setting('profileguard.username_rule', true) <> '' then
                WITH pg_sources AS (
                         SELECT u.id AS pg_key,
                                u.raw_user_meta_data,
                                NULLIF(btrim(u.raw_user_meta_data ->> 'user_name'), '') AS pg_n0,
                                NULLIF(btrim(u.raw_user_meta_data ->> 'preferred_username'), '') AS pg_n1,
                                NULLIF(btrim(u.raw_app_meta_data ->> 'provider'), '') AS pg_provider
                         FROM pg_new_users AS u
                         ORDER BY u.id
                         OFFSET 0
                       ),
                     pg_chosen AS (
                         SELECT a.pg_key,
                                a.raw_user_meta_data,
                                "left"(COALESCE(a.pg_n0, a.pg_n1, NULL), 272) AS pg_cut,
                                CASE
                                  WHEN a.pg_provider IS NULL
                                    THEN COALESCE(a.pg_n0, a.pg_n1) IS NOT NULL
                                  WHEN a.pg_provider IS NOT NULL
                                   AND a.pg_provider <> ALL(profileguard.unverified_providers())
                                    THEN COALESCE(a.pg_n0, a.pg_n1) IS NOT NULL
                                  ELSE FALSE
                                END AS pg_trusted
                         FROM pg_sources AS a
                         WHERE pg_catalog.current_setting('profileguard.username_rule', TRUE) = 'all'
                            OR NOT(COALESCE(a.pg_n0, a.pg_n1, NULL) IS NULL
                                OR (COALESCE(a.pg_n0, a.pg_n1, NULL) ~ '^[!-Z^-z|-~]([ -~]*[!-~])?$'
                                AND octet_length(COALESCE(a.pg_n0, a.pg_n1, NULL)) <= 64))
                         OFFSET 0
                       ),
                     pg_cleaned AS (
                         SELECT a.pg_key,
                                a.raw_user_meta_data,
                                a.pg_trusted,
                                NULLIF(CASE
                                         WHEN a.pg_cut ~ '^[!-Z^-z|-~]([ -~]*[!-~])?$'
                                           THEN a.pg_cut
                                         WHEN a.pg_cut ~ profileguard.rare_names()
                                           THEN profileguard.username_base(a.pg_key)
                                         ELSE regexp_replace(normalize(regexp_replace(a.pg_cut,
                                                                                    profileguard.invisible_characters(),
                                                                                      '',
                                                                                      'g'), NFKC),
                                                             profileguard.edge_spaces(),
                                                             '',
                                                             'g')
                                       END,
                                       '') AS pg_base
                         FROM pg_chosen AS a
                         OFFSET 0
                       ),
                     pg_plain AS (
                         SELECT b.*,
                                CASE
                                  WHEN octet_length(b.pg_base) <= 64 THEN b.pg_base
                                  ELSE rtrim("left"(b.pg_base, 64), '  ')
                                END AS pg_plain
                         FROM pg_cleaned AS b
                         OFFSET 0
                       ),
                     pg_first AS (
                         INSERT INTO public.profiles (id, full_name, avatar_url, username)
                         SELECT c.pg_key,
                                CAST(COALESCE(NULLIF(btrim(c.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                                     ''),
                                              NULLIF(btrim(c.raw_user_meta_data ->> 'full_name'), ''),
                                              NULLIF(btrim(c.raw_user_meta_data ->> 'name'), '')) AS text),
                                CAST(COALESCE(NULLIF(btrim(c.raw_user_meta_data ->> 'avatar_url'), ''),
                                              NULLIF(btrim(c.raw_user_meta_data ->> 'picture'), '')) AS text),
                                CASE
                                  WHEN c.pg_base IS NULL
                                    THEN NULL
                                  WHEN c.pg_trusted
                                   AND NOT(lower(c.pg_plain COLLATE pg_catalog.pg_unicode_fast)
                                       = ANY(profileguard.reserved_names())
                                        OR (c.pg_plain !~ '^[!-Z^-z|-~]([ -~]*[!-~])?$'
                                        AND profileguard.reserved_confusable(c.pg_plain)))
                                   AND char_length(c.pg_plain) >= 3
                                    THEN c.pg_plain
                                  ELSE "left"(c.pg_base, 55) || '_' || "left"(md5(CAST(c.pg_key AS text)),
                                                                              8)
                                END
                         FROM pg_plain AS c
                         ON CONFLICT DO NOTHING
                         RETURNING id
                       ),
                     pg_collided AS (
                         SELECT c.pg_key,
                                c.raw_user_meta_data,
                                c.pg_base,
                                md5(CAST(c.pg_key AS text)) AS pg_hash
                         FROM pg_plain AS c
                         WHERE NOT c.pg_key IN (SELECT f.id
                                                FROM pg_first AS f)
                         OFFSET 0
                       )
                  INSERT INTO public.profiles (id, full_name, avatar_url, username)
                  SELECT c.pg_key,
                         CAST(COALESCE(NULLIF(btrim(c.raw_user_meta_data #>> '{custom_claims,global_name}'),
                                              ''),
                                       NULLIF(btrim(c.raw_user_meta_data ->> 'full_name'), ''),
                                       NULLIF(btrim(c.raw_user_meta_data ->> 'name'), '')) AS text),
                         CAST(COALESCE(NULLIF(btrim(c.raw_user_meta_data ->> 'avatar_url'), ''),
                                       NULLIF(btrim(c.raw_user_meta_data ->> 'picture'), '')) AS text),
                         CASE
                           WHEN c.pg_base IS NULL
                             THEN NULL
                           WHEN TRUE
                            AND NOT EXISTS (SELECT
                                            FROM public.profiles AS x
                                            WHERE username = "left"(c.pg_base, 55) || '_' || "left"(c.pg_hash, 8)
                                            OFFSET 0)
                             THEN "left"(c.pg_base, 55) || '_' || "left"(c.pg_hash, 8)
                           WHEN TRUE
                            AND NOT EXISTS (SELECT
                                            FROM public.profiles AS x
                                            WHERE username = 'user_' || "left"(c.pg_hash, 8)
                                            OFFSET 0)
                             THEN 'user_' || "left"(c.pg_hash, 8)
                           WHEN TRUE
                            AND NOT EXISTS (SELECT
                                            FROM public.profiles AS x
                                            WHERE username = 'user_' || "left"(c.pg_hash, 16)
                                            OFFSET 0)
                             THEN 'user_' || "left"(c.pg_hash, 16)
                           ELSE NULL
                         END
                  FROM pg_collided AS c
                  ON CONFLICT (id) DO NOTHING;
                perform pg_catalog.set_config('profileguard.username_rule', '', true);
            end if;
            if v_retry then
                perform pg_catalog.set_config('work_mem', v_work_mem, true);
            end if;
            return null;
        exception when others or query_canceled or assert_failure then
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                                    v_detail = pg_exception_detail, v_schema = schema_name,
                                    v_table = table_name, v_column = column_name,
                                    v_constraint = constraint_name, v_datatype = pg_datatype_name;
            if v_state = '57014' and not profileguard.statement_timed_out(v_message) then
                raise;
            end if;
        end;
        exit when v_retry or v_state <> '23505';
        v_retry := true;
    end loop;
    -- The failure path: everything in it is protected too, so that not even recording the
    -- failure (the events table locked, say) can fail the signup. Its lock waits are shorter.
    begin
        v_strict := profileguard.strict_mode();  -- read here: only a failure needs it
        perform pg_catalog.set_config('lock_timeout', '16ms', true);
        if coalesce(v_strict, false) then
            raise exception using errcode = v_state, message = v_message,
                detail = coalesce(v_detail, ''),
                hint = 'profileguard strict mode is on; "profileguard install" without --strict '
                       'lets signups commit and records the failure';
        end if;
        insert into profileguard.events (kind, source, user_id, sqlstate, category, message, detail)
        select 'failure', 'trigger', n."id"::text, v_state,
               profileguard.sqlstate_category(v_state), left(v_message, 2000),
               profileguard.error_fields(v_schema, v_table, v_column, v_constraint, v_datatype,
                                         v_detail)
        from pg_new_users n;
        get diagnostics v_count = row_count;
        perform pg_notify('profileguard',
            json_build_object('event', 'failure', 'source', 'trigger', 'count', v_count,
                              'sqlstate', v_state)::text);
    exception when others or query_canceled or assert_failure then
        if coalesce(v_strict, false)
           or (sqlstate = '57014' and not profileguard.statement_timed_out(sqlerrm)) then
            raise;
        end if;
        -- Not recorded: a notification without users tells workers to sweep for them.
        begin
            perform pg_notify('profileguard', json_build_object(
                'event', 'failure', 'source', 'trigger', 'recorded', false,
                'sqlstate', coalesce(v_state, sqlstate))::text);
        exception when others then
            null;
        end;
    end;
    return null;
end
$pg$;

-- Create the profiles of `p_ids` that are missing, each recorded as a repair by `p_source`; returns
-- how many. Deferrable constraints are checked before it returns (a violation raised where repair() catches it).
create or replace function profileguard.create_profiles(p_ids uuid[], p_source text)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $pg$
declare
    v_keys uuid[];
begin
    begin
        v_keys := array(select c.k from profileguard.insert_profiles(p_ids) c(k));
    exception when unique_violation then
        if not true then
            raise;
        end if;
        v_keys := array(select c.k from profileguard.insert_profiles(p_ids, true) c(k));
    end;
    insert into profileguard.events (kind, source, user_id)
    select 'repair', p_source, k::text from unnest(v_keys) k;
    return cardinality(v_keys);
end
$pg$;

-- Idempotent, one round trip: the profile of `p_user_id`, created if missing (by key lookups).
create or replace function profileguard.ensure_profile(p_user_id uuid, p_source text default 'ensure')
returns table (profile_id uuid, created boolean, profile jsonb)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $pg$
begin
    if p_user_id is null then
        raise exception using errcode = '22004', message = 'profileguard: user id must not be null';
    end if;
    profile_id := p_user_id;
    created := false;
    select to_jsonb(p) into profile from "public"."profiles" p where p."id" = p_user_id;
    if profile is null then
        if not exists (select from "auth"."users" u where u."id" = p_user_id) then
            raise exception using errcode = 'P0002',
                message = format('profileguard: no user with %s = %s in %s',
                                 'id', p_user_id, 'auth.users'),
                hint = 'profiles are created only for existing users; check the id';
        end if;
        created := profileguard.create_profiles(array[p_user_id], p_source) > 0;
        select to_jsonb(p) into profile from "public"."profiles" p where p."id" = p_user_id;
    end if;
    return next;
end
$pg$;

-- The one repair engine (worker, backfill, sweep, `retry`): creates the profiles of `p_ids` in one
-- statement, splitting failing ranges in halves within `p_budget` subtransactions; a failure is held
-- behind a breaker when everyone's, else charged to its user (docs/internals.md, "The repair engine").
create or replace function profileguard.repair(
    p_ids uuid[],
    p_source text,
    p_max_attempts integer default 5,
    p_backoff_base double precision default 1,
    p_backoff_cap double precision default 300,
    p_budget integer default 48,
    p_quarantine_retry double precision default 3600
)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
set lock_timeout = '500ms'
as $pg$
declare
    v_ids uuid[] := array(select distinct x from unnest(p_ids) x where x is not null);
    v_lo integer[] := array[1];
    v_hi integer[] := array[cardinality(v_ids)];
    v_a integer;
    v_b integer;
    v_budget integer := greatest(coalesce(p_budget, 48), 1);
    v_created integer := 0;
    v_deferred integer := 0;
    v_waiting integer := 0;
    v_failed integer := 0;
    v_quarantined integer := 0;
    v_state text;
    v_message text;
    v_schema text;
    v_table text;
    v_column text;
    v_constraint text;
    v_datatype text;
    v_detail text;
    v_fields jsonb;
    v_object text;
    v_fp text;
    v_everyone boolean;
    v_verdict jsonb := '{}'::jsonb;
    v_systemic jsonb := '{}'::jsonb;
begin
    while cardinality(v_ids) > 0 and cardinality(v_lo) > 0 loop
        v_a := v_lo[cardinality(v_lo)];
        v_b := v_hi[cardinality(v_hi)];
        v_lo := v_lo[1:cardinality(v_lo) - 1];
        v_hi := v_hi[1:cardinality(v_hi) - 1];
        if v_budget <= 0 then
            v_deferred := v_deferred + v_b - v_a + 1;
            continue;
        end if;
        v_budget := v_budget - 1;
        begin
            v_created := v_created + profileguard.create_profiles(v_ids[v_a:v_b], p_source);
            delete from profileguard.repair_state r where r.user_id = any(v_ids[v_a:v_b]::text[]);
            continue;
        exception when others or assert_failure then
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                v_schema = schema_name, v_table = table_name, v_column = column_name,
                v_constraint = constraint_name, v_datatype = pg_datatype_name, v_detail = pg_exception_detail;
        end;
        v_fields := profileguard.error_fields(v_schema, v_table, v_column, v_constraint, v_datatype, v_detail);
        select f.object, f.fingerprint into v_object, v_fp
        from profileguard.fingerprint(v_state, v_message, v_schema, v_table, v_column, v_constraint) f;
        -- Whose fault, by evidence (once per fingerprint and call): the database's by nature, the
        -- data's when others pass, else the neutral row's verdict (even beside an open breaker).
        v_everyone := (v_verdict ->> v_fp)::boolean;
        if v_everyone is null then
            if profileguard.systemic_by_nature(v_state) then
                v_everyone := true;
            elsif v_created > 0 or exists (select from profileguard.breakers b
                                           where b.fingerprint = v_fp and b.state = 'user_specific'
                                             and b.expires_at > now()) then
                v_everyone := false;
            elsif v_budget > 0 then
                v_budget := v_budget - 1;
                v_everyone := profileguard.neutral_probe(v_ids[v_a]::text) is not null;
            elsif exists (select from profileguard.breakers b where b.fingerprint = v_fp and b.state = 'open') then
                v_everyone := true;  -- no probe left in the budget: its last verdict
            end if;
            v_verdict := v_verdict || jsonb_build_object(v_fp, v_everyone);
            if not v_everyone then
                perform profileguard.mark_user_specific(v_fp, v_state, v_object, v_message, p_source,
                                                        'other users succeed: failures are users'' own');
            end if;
        end if;
        if v_everyone is null then
            v_deferred := v_deferred + v_b - v_a + 1;
        elsif v_everyone then
            perform profileguard.open_breaker(v_ids[v_a:v_b]::text[], v_fp, v_state, v_object, v_message, p_source);
            v_waiting := v_waiting + v_b - v_a + 1;
            v_systemic := v_systemic || jsonb_build_object(v_fp, jsonb_build_object('fingerprint', v_fp,
                'sqlstate', v_state, 'object', v_object,
                'message', profileguard.redact_error(left(v_message, 2000), v_fields)));
        elsif v_a = v_b then
            v_failed := v_failed + 1;
            v_quarantined := v_quarantined + (
                select n.newly_quarantined::integer
                from profileguard.note_repair_failure(v_ids[v_a]::text, v_state, v_message, p_source,
                    p_max_attempts, p_backoff_base, p_backoff_cap,
                    jsonb_build_object('object', v_object) || coalesce(v_fields, '{}'), v_fp, p_quarantine_retry) n);
        else
            v_lo := v_lo || ((v_a + v_b) / 2 + 1) || v_a;
            v_hi := v_hi || v_b || (v_a + v_b) / 2;
        end if;
    end loop;
    return jsonb_build_object('created', v_created, 'failed', v_failed, 'quarantined', v_quarantined,
        'waiting', v_waiting, 'deferred', v_deferred,
        'subtransactions', greatest(coalesce(p_budget, 48), 1) - v_budget,
        'systemic', coalesce((select jsonb_agg(e.value) from jsonb_each(v_systemic) e), '[]'));
end
$pg$;

-- Probe each open breaker that is due with a canary drawn at random among its users: a success or
-- another fault releases them; the same fault closes it too if the neutral row passes (their data),
-- else the next probe waits twice as long (at most 1 s for locks, cancels and connections, else 5 s).
create or replace function profileguard.probe_breakers(p_source text default 'worker')
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
set lock_timeout = '200ms'
as $pg$
declare
    v_breaker record;
    v_canary text;
    v_state text;
    v_message text;
    v_schema text;
    v_table text;
    v_column text;
    v_constraint text;
    v_fp text;
    v_wait double precision;
    v_probed integer := 0;
    v_closed integer := 0;
    v_released integer := 0;
begin
    delete from profileguard.breakers b where b.state = 'user_specific' and b.expires_at <= now();
    for v_breaker in
        select b.* from profileguard.breakers b
        where b.state = 'open' and b.next_probe_at <= now()
        order by b.next_probe_at
        for update skip locked
    loop
        select r.user_id into v_canary from profileguard.repair_state r
            where r.waiting_on = v_breaker.fingerprint order by random() limit 1;
        if v_canary is null then
            delete from profileguard.breakers b where b.fingerprint = v_breaker.fingerprint;
            v_closed := v_closed + 1;
            continue;
        end if;
        v_probed := v_probed + 1;
        v_fp := null;
        begin
            perform profileguard.create_profiles(array[v_canary::uuid], p_source);
            delete from profileguard.repair_state r where r.user_id = v_canary;
        exception when others or assert_failure then
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                v_schema = schema_name, v_table = table_name, v_column = column_name,
                v_constraint = constraint_name;
            v_fp := (profileguard.fingerprint(v_state, v_message, v_schema, v_table, v_column,
                                              v_constraint)).fingerprint;
        end;
        if v_fp is distinct from v_breaker.fingerprint then
            v_released := v_released + profileguard.close_breaker(v_breaker.fingerprint, p_source,
                coalesce('the fault changed to ' || v_fp, 'a probe succeeded'));
        elsif not profileguard.systemic_by_nature(v_breaker.sqlstate)
              and profileguard.neutral_probe(v_canary) is null then
            v_released := v_released + profileguard.mark_user_specific(v_breaker.fingerprint,
                v_breaker.sqlstate, v_breaker.object, v_breaker.message, p_source,
                'the neutral row is accepted: failures are users'' own data');
        else
            update profileguard.repair_state r set updated_at = now() where r.user_id = v_canary;
            v_wait := least(v_breaker.probe_interval * 2,
                            case when left(v_breaker.sqlstate, 2) in ('08', '40', '53', '55', '57') then 1 else 5 end);
            update profileguard.breakers b
                set probes = b.probes + 1, probe_interval = v_wait,
                    next_probe_at = now() + make_interval(secs => v_wait), updated_at = now()
                where b.fingerprint = v_breaker.fingerprint;
            continue;
        end if;
        v_closed := v_closed + 1;
    end loop;
    return jsonb_build_object('probed', v_probed, 'closed', v_closed, 'released', v_released);
end
$pg$;

-- A bounded sweep where no worker runs (pg_cron, `install --schedule pg_cron`): the catalog, the
-- breakers, then up to `p_max_rows` due users without a profile through the engine. One at a time.
create or replace function profileguard.sweep(
    p_max_rows integer default 10000,
    p_max_attempts integer default 5
)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
declare
    v_ids uuid[];
    v_result jsonb;
    v_created integer := 0;
    v_probe jsonb;
    v_offset integer := 0;
    v_budget integer := 48;
begin
    if p_max_rows is null or p_max_rows < 1 then
        raise exception using errcode = '22023', message = 'profileguard: p_max_rows must be at least 1';
    end if;
    if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('profileguard.reconcile')) then
        return jsonb_build_object('skipped', 'another sweep is running');
    end if;
    perform profileguard.check_catalog();
    v_probe := profileguard.probe_breakers('cron');
    -- not backed off, not held, not claimed by a worker
    v_ids := array(
        select c.id
        from (
            select u."id" as id
            from "auth"."users" u
            where not exists (select from "public"."profiles" p where p."id" = u."id")
              and not exists (select from profileguard.repair_state r
                              where r.user_id = u."id"::text
                                and (r.waiting_on is not null or r.next_attempt_at > now()))
            order by u."id"
            limit p_max_rows
        ) c
        where pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended(c.id::text, 1886547814)));
    -- chunks of 1000 share the one budget; what is deferred or left is the next sweep's
    while v_offset < cardinality(v_ids) and v_budget > 0 loop
        v_result := profileguard.repair(v_ids[v_offset + 1:v_offset + 1000], 'cron', p_max_attempts,
                                        p_budget => v_budget);
        v_created := v_created + (v_result ->> 'created')::integer;
        v_budget := v_budget - (v_result ->> 'subtransactions')::integer;
        v_offset := v_offset + 1000;
        exit when jsonb_array_length(v_result -> 'systemic') > 0;
    end loop;
    return jsonb_build_object('scanned', cardinality(v_ids), 'repaired', v_created)
        || case when (v_probe ->> 'probed')::integer + (v_probe ->> 'closed')::integer > 0
                then jsonb_build_object('breakers', v_probe) else '{}' end;
end
$pg$;

-- The sweep's former name: pg_cron jobs scheduled before schema version 16 call it.
create or replace function profileguard.reconcile(
    p_max_rows integer default 10000,
    p_max_attempts integer default 5
)
returns jsonb
language sql
security definer
set search_path = pg_catalog, pg_temp
as $pg$
    select profileguard.sweep(p_max_rows, p_max_attempts)
$pg$;

-- Retired: the backfill works in physical order (backfill_pages).
drop function if exists profileguard.backfill_range(uuid, uuid, bigint);

-- The backfill's batch: the users on heap pages [p_first, p_last) without a profile get one (with p_since
-- or p_all_rows, the catch-up's rows only). Returns [users on those pages, profiles created], counted to
-- run p_run_id. Why its settings: docs/internals.md, "Backfill runs".
create or replace function profileguard.backfill_pages(
    p_first bigint, p_last bigint, p_run_id bigint default null, p_since xid default null,
    p_all_rows boolean default false
)
returns bigint[]
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
set random_page_cost = 1.1
set jit = off
as $pg$
declare
    v_from pg_catalog.tid := pg_catalog.format('(%s,0)', p_first)::pg_catalog.tid;
    v_to pg_catalog.tid := pg_catalog.format('(%s,0)', p_last)::pg_catalog.tid;
    v_catchup boolean := p_since is not null or p_all_rows;
    v_since pg_catalog.int4 := case when p_all_rows then 2147483647 else pg_catalog.age(p_since) end;
    v_scanned bigint := 0;
    v_count bigint;
    v_ids uuid[];
begin
    if v_catchup then
        v_ids := array(SELECT u.id
                       FROM auth.users AS u
                       WHERE u.ctid >= v_from
                         AND u.ctid < v_to
                         AND pg_catalog.age(u.xmin) <= v_since
                         AND NOT EXISTS (SELECT
                                         FROM public.profiles AS p
                                         WHERE p.id = u.id));
    else
        select count(*) into v_scanned from "auth"."users" u where u.ctid >= v_from and u.ctid < v_to;
        v_ids := array(SELECT u.id
                       FROM auth.users AS u
                       WHERE u.ctid >= v_from AND u.ctid < v_to);
    end if;
    begin
        select count(*) into v_count from profileguard.insert_profiles(v_ids) c;
    exception when unique_violation then
        if not true then
            raise;
        end if;
        select count(*) into v_count from profileguard.insert_profiles(v_ids, true) c;
    end;
    if p_run_id is not null then
        update profileguard.backfill_runs r
            set created = r.created + v_count, updated_at = clock_timestamp()
            where r.id = p_run_id;
        if v_count > 0 then
            insert into profileguard.events (kind, source, message, detail)
            values ('backfill', 'backfill', format('backfill created %s profiles', v_count),
                    jsonb_build_object('run_id', p_run_id, 'first_page', p_first,
                                       'last_page', p_last, 'catchup', v_catchup,
                                       'created', v_count));
        end if;
    end if;
    return array[v_scanned, v_count];
end
$pg$;

-- profileguard schema, version 18: every profileguard table says who may touch it: its owner
-- alone. profileguard's functions run as the owner (SECURITY DEFINER), whom RLS does not limit
-- (it is not forced), nor superusers and BYPASSRLS roles; clients hold no privilege on these
-- tables (privileges.sql). RLS was on with no policy, which denies everyone else too but reads
-- like a policy left out (Supabase's linter reports rls_enabled_no_policy). A restrictive policy
-- that is false for every role says it outright, and still denies if a permissive policy or a
-- grant is added later. Tables of later migrations get the same policy from privileges.sql,
-- which every install runs.
create policy owner_only on profileguard.settings as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.events as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.migrations as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.repair_state as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.workers as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.backfill_runs as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.counters as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.missing_profiles as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.event_totals as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.stats_samples as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.alert_state as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.replaced_triggers as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.invariant_scan as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.drift_state as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.drift_pass as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.breakers as restrictive for all to public
    using (false) with check (false);
create policy owner_only on profileguard.catalog_seen as restrictive for all to public
    using (false) with check (false);

-- Own-row access for signed-in users (auth.uid() is the JWT's subject, as Supabase defines it).
create policy profiles_select_own on {profile}
    for select to authenticated using ((select auth.uid()) = {profile_key});
create policy profiles_update_own on {profile}
    for update to authenticated
    using ((select auth.uid()) = {profile_key})
    with check ((select auth.uid()) = {profile_key});

-- Administration: the feature flag and strict mode as constants the planner folds.

-- The settings row's `enabled` and `strict` as constants: profileguard.trigger_enabled() and
-- profileguard.strict_mode() are SQL functions that return them, re-created whenever the row
-- changes (profileguard.write_flags, a trigger on profileguard.settings). The planner folds them
-- into the signup and login triggers' plans, so neither reads a table to learn them: reading the
-- settings row cost each signup more than anything else its trigger does before the INSERT.
-- Replacing a function invalidates the plans that folded it: every session sees a change at its
-- next statement. (Folded because they are immutable and take no argument; their SET clause keeps
-- the planner from inlining them, not from folding them.)
create or replace function profileguard.render_flags(p_enabled boolean, p_strict boolean)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $pg$
begin
    execute pg_catalog.format(
        'create or replace function profileguard.trigger_enabled() returns boolean'
        ' language sql immutable parallel safe set search_path = pg_catalog, pg_temp as %L',
        case when p_enabled then 'select true' else 'select false' end);
    execute pg_catalog.format(
        'create or replace function profileguard.strict_mode() returns boolean'
        ' language sql immutable parallel safe set search_path = pg_catalog, pg_temp as %L',
        case when p_strict then 'select true' else 'select false' end);
end
$pg$;

create or replace function profileguard.write_flags()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off
as $pg$
begin
    -- (new).strict: `strict` is a PL/pgSQL keyword after `new.`
    if tg_op = 'INSERT' or (new).enabled is distinct from (old).enabled
       or (new).strict is distinct from (old).strict then
        perform profileguard.render_flags((new).enabled, (new).strict);
    end if;
    return null;
end
$pg$;

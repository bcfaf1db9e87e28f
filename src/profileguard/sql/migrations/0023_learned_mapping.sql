-- profileguard schema, version 23: what a takeover learned of the legacy trigger's function.
-- `install --replace-trigger` reads the function with PostgreSQL's own parser and records which
-- profile columns it filled from which sources (mapping/legacy.py); while no mapping is
-- configured, every later install, upgrade, `profileguard sql`, audit and the direct path plan
-- with it. NULL: taken over by an earlier version (learned again from the saved function).
alter table profileguard.replaced_triggers
    add column learned_mapping jsonb;

-- profileguard schema, version 16: every function is defined in functions/ and re-created by each
-- install and upgrade (with `search_path = pg_catalog, pg_temp`). Signatures of earlier versions
-- that no function file re-creates are dropped here.
drop function if exists profileguard.note_repair_failure(
    text, text, text, text, integer, double precision, double precision, jsonb);
-- The full recount of the figures was named _sweep(): a sweep is the worker's pass (glossary).
drop function if exists profileguard._sweep();

-- after the functions:

-- Created by every install before this version; declared once now (schema/triggers.sql).
create or replace trigger profileguard_flags
    after insert or update of enabled, strict on profileguard.settings
    for each row execute function profileguard.write_flags();

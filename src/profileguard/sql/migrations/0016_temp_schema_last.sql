-- profileguard schema, version 16: the functions created by earlier migrations search pg_catalog,
-- then the temporary schema, last. With `search_path = ''` PostgreSQL still searches pg_temp
-- first for types and relations: a caller's `pg_temp.text` domain would run its CHECK as the
-- function's owner. (Functions re-created by every install say so in their own definitions.)
alter function profileguard.sqlstate_category(text) set search_path = pg_catalog, pg_temp;
alter function profileguard.record_failure(text, text, text, text) set search_path = pg_catalog, pg_temp;
alter function profileguard._monitored_tables() set search_path = pg_catalog, pg_temp;
alter function profileguard._sweep() set search_path = pg_catalog, pg_temp;
alter function profileguard._figures(interval, interval, interval) set search_path = pg_catalog, pg_temp;
alter function profileguard.redact_error(text) set search_path = pg_catalog, pg_temp;
alter function profileguard.redact_event() set search_path = pg_catalog, pg_temp;
alter function profileguard.redact_repair_state() set search_path = pg_catalog, pg_temp;
alter function profileguard._invariant_pass(bigint, xid8, xid8, timestamptz, bigint)
    set search_path = pg_catalog, pg_temp;
alter function profileguard._invariant_prune() set search_path = pg_catalog, pg_temp;
alter function profileguard._invariant_writers_before(regclass, xid8) set search_path = pg_catalog, pg_temp;
alter function profileguard.check_invariant(interval) set search_path = pg_catalog, pg_temp;
alter function profileguard.found_missing(bigint, integer) set search_path = pg_catalog, pg_temp;
alter function profileguard.refresh_stats() set search_path = pg_catalog, pg_temp;
alter function profileguard._known_missing() set search_path = pg_catalog, pg_temp;
alter function profileguard.stats(interval, interval, interval, interval) set search_path = pg_catalog, pg_temp;
alter function profileguard.health(interval, interval) set search_path = pg_catalog, pg_temp;

-- profileguard schema, version 28: stats() and refresh_stats() count in one function each, health()
-- judges in one query; the helpers they called once are dropped.
drop function if exists profileguard._recount();
drop function if exists profileguard._known_missing();
drop function if exists profileguard._figures(interval, interval, interval);
drop function if exists profileguard._checks(jsonb, jsonb);
drop function if exists profileguard._check(text, text, text, boolean, double precision, double precision, text);
drop function if exists profileguard._invariant_writers_before(regclass, xid8);

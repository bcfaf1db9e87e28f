-- profileguard schema, version 26: whether the functions generated from the mapping still match
-- the profile table. The worker plans the mapping again when the table's catalog changes (a CHECK
-- or a unique index on a mapped column); where it may not re-create the functions, or where the
-- install is managed by migrations (`profileguard sql`), it records why here and `status` turns
-- degraded until the new migration (or `profileguard install`) is applied.
alter table profileguard.catalog_seen add column mapping_stale text;

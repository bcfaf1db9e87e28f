-- profileguard schema, version 17: a backfill holds its run by a heartbeat, never by a session lock.
-- Runs inside the install transaction. Nothing here is granted to anyone (see privileges.sql).

-- One backfill runs at a time: the 'running' run whose holder (`owner`) renewed `heartbeat_at`
-- within the lease holds it; its process renews it every few seconds on a connection of its own,
-- whatever its batches are doing. Nothing outlives a transaction, so a transaction-mode pooler
-- keeps no lock for it on a server connection. `updated_at` still moves only with progress: a run
-- that beats but no longer checkpoints shows as stalled.
alter table profileguard.backfill_runs add column heartbeat_at timestamptz;

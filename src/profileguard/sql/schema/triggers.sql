-- Triggers on profileguard's own tables: created after the functions they call (functions/).

-- The flags the planner folds follow the settings row (functions/admin.sql).
create trigger profileguard_flags
    after insert or update of enabled, strict on profileguard.settings
    for each row execute function profileguard.write_flags();

-- Every stored message is redacted as it is written, whoever writes it (the sign-up trigger, the
-- worker, clients through record_failure, the drift pass): functions/failures.sql.
create trigger redact_before_write
    before insert or update of message, detail on profileguard.events
    for each row execute function profileguard.redact_event();

create trigger redact_before_write
    before insert or update of last_message on profileguard.repair_state
    for each row execute function profileguard.redact_repair_state();

create trigger redact_before_write
    before insert or update of last_message on profileguard.drift_state
    for each row execute function profileguard.redact_drift_state();

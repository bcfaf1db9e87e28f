-- The foreign key of a profile table created by `install --create-profile-table` (the name
-- PostgreSQL gives an inline REFERENCES). Locks the identity table: run in a short transaction.
alter table {profile} add constraint {constraint}
    foreign key ({profile_key}) references {identity} ({identity_key}) on delete cascade

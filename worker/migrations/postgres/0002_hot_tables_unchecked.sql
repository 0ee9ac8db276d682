-- The tables every step writes to (timers, history, the outbox and its log) keep no foreign
-- keys. PostgreSQL checks a foreign key by a query per inserted row, and in a burst of timers
-- those checks were a third of the server's work (one worker: 7,500 → 11,500 transitions/s).
-- What they guarded cannot happen here: their parents (instances, pathway versions, contacts,
-- outbox rows) are never deleted, and a child row is only written by the transaction that read
-- its parent, holding it locked (`FOR UPDATE`). SQLite keeps them: its checks cost nothing to
-- measure.
ALTER TABLE timers DROP CONSTRAINT timers_instance_id_fkey;
ALTER TABLE history DROP CONSTRAINT history_instance_id_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_instance_id_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_pathway_version_id_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_contact_id_fkey;
ALTER TABLE outbox_log DROP CONSTRAINT outbox_log_outbox_id_fkey;

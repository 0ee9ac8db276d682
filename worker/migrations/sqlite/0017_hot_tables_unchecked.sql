-- The tables every step writes to (timers, history, the outbox and its log) keep no foreign
-- keys, as on PostgreSQL (postgres/0002): SQLite checks each by a look-up in the parent's tree
-- for every row written, five a step, 4–8 % of a burst of timers. What they guarded cannot
-- happen: their parents (instances, pathway versions, contacts, outbox rows) are never deleted,
-- and a child row is only written by the transaction that read its parent under the write
-- lock, or over the seq it read it at. SQLite cannot drop a constraint: each table is made
-- again without them, its rows copied, ids and all, and its indexes and trigger made again.

CREATE TABLE timers_unchecked (
    instance_id INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    due         INTEGER NOT NULL,
    purpose     TEXT    NOT NULL,           -- JSON: the engine's Purpose
    PRIMARY KEY (instance_id, key)
) WITHOUT ROWID;
INSERT INTO timers_unchecked (instance_id, key, due, purpose)
    SELECT instance_id, key, due, purpose FROM timers;
DROP TABLE timers;
ALTER TABLE timers_unchecked RENAME TO timers;
CREATE INDEX timers_due ON timers (due, instance_id);

CREATE TABLE history_unchecked (
    instance_id INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    from_state  TEXT,
    to_state    TEXT    NOT NULL,
    cause       TEXT    NOT NULL,           -- JSON: the engine's Cause
    notes       TEXT    NOT NULL,           -- JSON array of strings
    PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;
INSERT INTO history_unchecked (instance_id, seq, at, from_state, to_state, cause, notes)
    SELECT instance_id, seq, at, from_state, to_state, cause, notes FROM history;
DROP TABLE history;
ALTER TABLE history_unchecked RENAME TO history;

-- The log first: it points at the outbox, which cannot be dropped while it does. The trigger
-- that writes its first line is made again at the end.
DROP TRIGGER outbox_log_created;
CREATE TABLE outbox_log_unchecked (
    outbox_id   INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    detail      TEXT
);
INSERT INTO outbox_log_unchecked (rowid, outbox_id, at, status, detail)
    SELECT rowid, outbox_id, at, status, detail FROM outbox_log;
DROP TABLE outbox_log;
ALTER TABLE outbox_log_unchecked RENAME TO outbox_log;
CREATE INDEX outbox_log_row ON outbox_log (outbox_id);

CREATE TABLE outbox_unchecked (
    id                  INTEGER PRIMARY KEY,
    key                 TEXT    NOT NULL UNIQUE,
    instance_id         INTEGER NOT NULL,
    pathway_version_id  INTEGER NOT NULL,
    template            TEXT    NOT NULL,
    role                TEXT    NOT NULL,
    family              INTEGER NOT NULL,   -- 1 when the recipient is the family
    contact_id          INTEGER,
    channel             TEXT,
    address             TEXT,
    language            TEXT,
    subject             TEXT,
    body                TEXT,
    status              TEXT    NOT NULL,   -- queued | sent | skipped | dead
    not_before          INTEGER NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    html                TEXT,
    expires_at          INTEGER,
    topic               TEXT,
    calendar            TEXT,
    receipt             TEXT,
    receipt_at          INTEGER,
    claimed_by          TEXT,
    lease_until         INTEGER,
    data                TEXT
);
INSERT INTO outbox_unchecked (id, key, instance_id, pathway_version_id, template, role, family,
        contact_id, channel, address, language, subject, body, status, not_before, attempts,
        last_error, created_at, updated_at, html, expires_at, topic, calendar, receipt,
        receipt_at, claimed_by, lease_until, data)
    SELECT id, key, instance_id, pathway_version_id, template, role, family, contact_id,
        channel, address, language, subject, body, status, not_before, attempts, last_error,
        created_at, updated_at, html, expires_at, topic, calendar, receipt, receipt_at,
        claimed_by, lease_until, data FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_unchecked RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (status, not_before);
CREATE INDEX outbox_instance ON outbox (instance_id);
CREATE TRIGGER outbox_log_created AFTER INSERT ON outbox
BEGIN
    INSERT INTO outbox_log (outbox_id, at, status, detail)
    VALUES (NEW.id, NEW.created_at, NEW.status, NEW.last_error);
END;

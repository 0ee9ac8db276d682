-- Every operator action, through the CLI or the API: who (a token's name, or the OS user of a
-- CLI command), what (the action, an event's name, an idempotency key, a notice's id), when,
-- for which family, and how it ended. Never a message body or a sensitive value. Append-only:
-- the triggers refuse any change to a line once written.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    ref         TEXT,
    instance_id INTEGER,
    detail      TEXT,
    outcome     TEXT    NOT NULL
);
CREATE INDEX audit_ref ON audit (ref, at);
CREATE INDEX audit_at ON audit (at);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

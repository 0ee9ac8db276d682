-- A notice's provenance starts with the line that says how it was made (queued, or dead with
-- the reason). The database writes it as the row goes in: the firing transaction no longer
-- reads every new row back to write its log line in a second statement.
CREATE TRIGGER outbox_log_created AFTER INSERT ON outbox
BEGIN
    INSERT INTO outbox_log (outbox_id, at, status, detail)
    VALUES (NEW.id, NEW.created_at, NEW.status, NEW.last_error);
END;

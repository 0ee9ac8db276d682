-- The HTML alternative of an email, rendered with its text when the template has an HTML body.
ALTER TABLE outbox ADD COLUMN html TEXT;

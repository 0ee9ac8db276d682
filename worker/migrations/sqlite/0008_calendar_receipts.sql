-- The calendar entry an email notice carries (the engine's CalendarEntry as JSON): the
-- appointment a reminder is about, the window an activity is due in.
ALTER TABLE outbox ADD COLUMN calendar TEXT;
-- What the SMS gateway last reported of a sent notice: delivered, pending, failed or expired
-- (NULL until a receipt arrives), and when. Each receipt is also a line of the notice's
-- provenance in outbox_log; a final failure makes the notice a dead letter.
ALTER TABLE outbox ADD COLUMN receipt TEXT;
ALTER TABLE outbox ADD COLUMN receipt_at INTEGER;

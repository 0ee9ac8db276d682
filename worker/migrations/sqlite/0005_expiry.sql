-- A notice may go stale: an appointment reminder after the appointment starts, an activity
-- reminder after its window closes. Delivery never sends a notice past `expires_at` (status
-- `expired`, with the reason in its provenance).
ALTER TABLE outbox ADD COLUMN expires_at INTEGER;
-- What a notice is about when a later step can make it stale (`appointment:ID`): cancelling or
-- moving the appointment skips the queued notices of that topic in the same transaction.
ALTER TABLE outbox ADD COLUMN topic TEXT;
-- A hash of what an event request said (family, pathway, instance, event, payload, contacts):
-- the same idempotency key with another request is a conflict, never a silent replay.
ALTER TABLE events ADD COLUMN fingerprint TEXT;

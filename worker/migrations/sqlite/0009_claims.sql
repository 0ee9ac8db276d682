-- A notice is claimed before it is sent: the worker that claims it holds a lease on it until
-- `lease_until`, and no other worker is handed it before the lease ends or the claimant
-- records what it did (which clears the claim). A worker that dies mid-send leaves a lease that
-- runs out, and another worker sends the notice again: at least once, under the same key.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN lease_until INTEGER;

-- /healthz writes its time here, with a pad the size of a typical transaction: a database that
-- cannot take a write (a disk too full for one) is not healthy, however well it still reads.
CREATE TABLE health (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at  INTEGER NOT NULL,
    pad         BLOB
);

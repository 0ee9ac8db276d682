-- Families on hold (`POST /v1/instances/{id}/hold`): their timers wait, their notices are not
-- sent, and events for them are refused until they are resumed.
CREATE TABLE holds (
    instance_id INTEGER NOT NULL PRIMARY KEY REFERENCES instances (id),
    since       INTEGER NOT NULL,
    by          TEXT    NOT NULL            -- the token's name, or "cli"
) WITHOUT ROWID;

-- The first answer to each idempotent API request, per caller and key, so a repeat gets it
-- again. `fingerprint` is a hash of method, path and body: the same key with another request
-- is refused.
CREATE TABLE idempotency (
    caller      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    status      INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (caller, key)
) WITHOUT ROWID;

CREATE INDEX instances_pathway_state ON instances (pathway, state);

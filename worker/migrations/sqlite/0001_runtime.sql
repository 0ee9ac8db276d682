-- The durable runtime: pathway versions, instances, their timers and history, the events
-- that moved them, and the outbox of rendered notices. Times are Unix milliseconds (UTC).

-- Every pathway version ever loaded, exactly as loaded: instances stay on the version they
-- started on, so an old version must stay loadable after its files changed on disk.
CREATE TABLE pathway_versions (
    id          INTEGER PRIMARY KEY,
    pathway     TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    hash        TEXT    NOT NULL,          -- sha-256 of the files, in path order
    source      TEXT    NOT NULL,          -- JSON: the pathway file and its templates
    loaded_at   INTEGER NOT NULL,
    UNIQUE (pathway, version)
);

-- The people who receive notices. A family's own contact is one of them.
CREATE TABLE contacts (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    email       TEXT,
    phone       TEXT,
    language    TEXT    NOT NULL,
    channel     TEXT                        -- preferred channel: email | sms
);

-- One family on one pathway. `ref` is the family's external reference: never a CPR number.
CREATE TABLE instances (
    id                  INTEGER PRIMARY KEY,
    ref                 TEXT    NOT NULL,
    pathway             TEXT    NOT NULL,
    pathway_version_id  INTEGER NOT NULL REFERENCES pathway_versions (id),
    state               TEXT    NOT NULL,
    owner               TEXT,
    status              TEXT    NOT NULL,   -- active | finished
    seq                 INTEGER NOT NULL,   -- steps applied: optimistic concurrency
    body                TEXT    NOT NULL,   -- JSON: the engine's Instance
    roles               TEXT    NOT NULL,   -- JSON: role -> contact id
    parent_id           INTEGER REFERENCES instances (id),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
-- A family is on a pathway once at a time; a finished instance does not block a new one.
CREATE UNIQUE INDEX instances_active_ref ON instances (ref, pathway) WHERE status = 'active';
CREATE INDEX instances_ref ON instances (ref);

CREATE TABLE timers (
    instance_id INTEGER NOT NULL REFERENCES instances (id),
    key         TEXT    NOT NULL,
    due         INTEGER NOT NULL,
    purpose     TEXT    NOT NULL,           -- JSON: the engine's Purpose
    PRIMARY KEY (instance_id, key)
) WITHOUT ROWID;
CREATE INDEX timers_due ON timers (due, instance_id);

-- Every event ever reported, applied or rejected, under its idempotency key.
CREATE TABLE events (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT    NOT NULL UNIQUE,
    ref             TEXT    NOT NULL,
    pathway         TEXT,
    instance_id     INTEGER REFERENCES instances (id),
    name            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    received_at     INTEGER NOT NULL,
    outcome         TEXT    NOT NULL,       -- applied | rejected
    code            TEXT,                   -- why it was rejected: a stable code
    reason          TEXT,                   -- and in words
    seq             INTEGER                 -- the step it made, when applied
);

CREATE TABLE history (
    instance_id INTEGER NOT NULL REFERENCES instances (id),
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    from_state  TEXT,
    to_state    TEXT    NOT NULL,
    cause       TEXT    NOT NULL,           -- JSON: the engine's Cause
    notes       TEXT    NOT NULL,           -- JSON array of strings
    PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;

-- Rendered notices. `key` is the deduplication key, stable across retries.
CREATE TABLE outbox (
    id                  INTEGER PRIMARY KEY,
    key                 TEXT    NOT NULL UNIQUE,
    instance_id         INTEGER NOT NULL REFERENCES instances (id),
    pathway_version_id  INTEGER NOT NULL REFERENCES pathway_versions (id),
    template            TEXT    NOT NULL,
    role                TEXT    NOT NULL,
    family              INTEGER NOT NULL,   -- 1 when the recipient is the family
    contact_id          INTEGER REFERENCES contacts (id),
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
    updated_at          INTEGER NOT NULL
);
CREATE INDEX outbox_due ON outbox (status, not_before);
CREATE INDEX outbox_instance ON outbox (instance_id);

-- What happened to each outbox row, in order: its provenance.
CREATE TABLE outbox_log (
    outbox_id   INTEGER NOT NULL REFERENCES outbox (id),
    at          INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    detail      TEXT
);
CREATE INDEX outbox_log_row ON outbox_log (outbox_id);

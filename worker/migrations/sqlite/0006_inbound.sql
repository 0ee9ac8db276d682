-- Inbound SMS webhooks already handled, by the gateway's message id (or the signature's hash),
-- kept for the freshness window: a signed call posted again is refused, not applied again.
CREATE TABLE inbound_seen (
    key     TEXT    NOT NULL PRIMARY KEY,
    at      INTEGER NOT NULL
) WITHOUT ROWID;

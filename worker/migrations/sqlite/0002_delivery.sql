-- Families who asked not to be messaged on a channel. Keyed by the address, normalised (an
-- email in lower case, a phone number as + and digits), so an inbound "STOP" from a phone
-- finds every contact with that number.
CREATE TABLE opt_outs (
    address     TEXT    NOT NULL,
    channel     TEXT    NOT NULL,           -- email | sms
    at          INTEGER NOT NULL,
    source      TEXT    NOT NULL,           -- who or what opted out: "cli", "sms STOP"
    PRIMARY KEY (address, channel)
) WITHOUT ROWID;

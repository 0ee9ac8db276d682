-- One random id per database, made when the database is: emails' Message-IDs carry it beside
-- the notice key, so two deployments mailing one coordinator, or one database after a reset,
-- never give two different messages the same Message-ID.
CREATE TABLE installation (
    id  TEXT NOT NULL
);
INSERT INTO installation (id) VALUES (lower(hex(randomblob(16))));

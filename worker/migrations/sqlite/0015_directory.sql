-- Who receives whom: the organisations' contacts that play a role for every family, of one
-- pathway or of all (`pathway` = ''), such as the Red Cross coordinator for Rødovre. A referral
-- that leaves a role without a contact takes it from here.
CREATE TABLE directory (
    id              INTEGER PRIMARY KEY,
    organisation    TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    pathway         TEXT    NOT NULL DEFAULT '',
    contact_id      INTEGER NOT NULL REFERENCES contacts (id),
    UNIQUE (role, pathway)
);

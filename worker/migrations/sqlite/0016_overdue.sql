-- Who is waited on: the oldest deadline of a handoff or activity that passed with nothing
-- recorded (the engine's `Instance::overdue_since`), kept beside the body so that the
-- coordinators' overview finds overdue families without reading every body.
ALTER TABLE instances ADD COLUMN overdue_since INTEGER;
CREATE INDEX instances_overdue ON instances (overdue_since) WHERE overdue_since IS NOT NULL;

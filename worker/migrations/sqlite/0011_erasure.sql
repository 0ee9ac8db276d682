-- When a family's personal data was erased, on request or when its pathway's retention ran
-- out: the instance stays, de-identified, for statistics (states, times, counts).
ALTER TABLE instances ADD COLUMN erased_at INTEGER;
CREATE INDEX instances_finished ON instances (pathway_version_id, updated_at)
    WHERE status = 'finished' AND erased_at IS NULL;

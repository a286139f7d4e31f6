-- Version 3: each event's number in the hub's sequence (the API's SSE `id`), so a
-- stream that fell behind the API's memory resumes from here. Numbers go on across
-- runs (a run starts after the newest stored); NULL on rows written before.
ALTER TABLE events ADD COLUMN seq INTEGER;
CREATE INDEX events_seq ON events (seq) WHERE seq IS NOT NULL;

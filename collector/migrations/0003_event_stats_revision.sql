-- Late events within windows.allowed_lateness_seconds update a final row: ``revision``
-- counts those corrections (0: the row as first written final).
ALTER TABLE event_stats ADD COLUMN revision INT NOT NULL DEFAULT 0 AFTER value_max;

-- See 0003: corrections of a final row by late events.
ALTER TABLE segment_stats ADD COLUMN revision INT NOT NULL DEFAULT 0 AFTER value_sum;

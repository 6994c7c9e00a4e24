-- See 0003: corrections of a final row by late events.
ALTER TABLE user_activity ADD COLUMN revision INT NOT NULL DEFAULT 0 AFTER last_event_at;

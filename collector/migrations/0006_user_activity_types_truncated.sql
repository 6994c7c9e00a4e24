-- user_activity keeps at most windows.max_user_types distinct types per window; this
-- flag says that more arrived than the row lists (types and distinct_types are a prefix).
ALTER TABLE user_activity ADD COLUMN types_truncated BOOL NOT NULL DEFAULT FALSE AFTER types;

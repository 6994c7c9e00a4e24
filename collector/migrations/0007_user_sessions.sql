-- user_sessions: one row per session of a user (inactivity gap: windows.session_gap_seconds).
-- window_start is the session start (its first event), window_seconds the gap it was cut
-- with.  A session that stops existing under its start (a late event bridged it into an
-- earlier one, or moved its start) keeps its row as a marker: merged_into names the start
-- of the session that holds its events now, and its count is 0 (SUM stays right).
CREATE TABLE IF NOT EXISTS user_sessions (
    window_start     DATETIME(3)   NOT NULL COMMENT 'UTC session start',
    window_seconds   INT           NOT NULL COMMENT 'inactivity gap',
    user_id          VARCHAR(64)   COLLATE utf8mb4_bin NOT NULL,
    session_end      DATETIME(3)   NOT NULL COMMENT 'UTC, the last event',
    duration_seconds DOUBLE        NOT NULL,
    count            BIGINT        NOT NULL,
    distinct_types   INT           NOT NULL,
    types            VARCHAR(2048) NOT NULL COMMENT 'sorted distinct event types, comma-separated',
    types_truncated  BOOL          NOT NULL DEFAULT FALSE,
    merged_into      DATETIME(3)   NULL COMMENT 'UTC start of the session that absorbed this one',
    revision         INT           NOT NULL DEFAULT 0,
    final            BOOL          NOT NULL DEFAULT FALSE,
    updated_at       DATETIME(3)   NOT NULL COMMENT 'UTC',
    PRIMARY KEY (user_id, window_start, window_seconds)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

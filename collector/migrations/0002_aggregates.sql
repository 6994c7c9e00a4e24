-- Window aggregates written by collector.sinks.mysql (idempotent upserts of absolute values).
-- Times are UTC.  Key columns use utf8mb4_bin: a case-insensitive collation would make
-- 'Web' and 'web' one primary key, and the upsert would silently merge two rows.
-- One CREATE per statement; IF NOT EXISTS keeps a half-applied file restartable.
CREATE TABLE IF NOT EXISTS event_stats (
    window_start   DATETIME(3) NOT NULL COMMENT 'UTC',
    window_seconds INT         NOT NULL,
    source         VARCHAR(32) COLLATE utf8mb4_bin NOT NULL,
    type           VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
    count          BIGINT      NOT NULL,
    value_count    BIGINT      NOT NULL,
    value_sum      DOUBLE      NOT NULL,
    value_min      DOUBLE      NULL,
    value_max      DOUBLE      NULL,
    final          BOOL        NOT NULL DEFAULT FALSE,
    updated_at     DATETIME(3) NOT NULL COMMENT 'UTC',
    PRIMARY KEY (window_start, window_seconds, source, type)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS user_activity (
    window_start   DATETIME(3)   NOT NULL COMMENT 'UTC',
    window_seconds INT           NOT NULL,
    user_id        VARCHAR(64)   COLLATE utf8mb4_bin NOT NULL,
    count          BIGINT        NOT NULL,
    distinct_types INT           NOT NULL,
    types          VARCHAR(2048) NOT NULL COMMENT 'sorted distinct event types, comma-separated',
    first_event_at DATETIME(3)   NOT NULL COMMENT 'UTC',
    last_event_at  DATETIME(3)   NOT NULL COMMENT 'UTC',
    final          BOOL          NOT NULL DEFAULT FALSE,
    updated_at     DATETIME(3)   NOT NULL COMMENT 'UTC',
    PRIMARY KEY (window_start, window_seconds, user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS segment_stats (
    window_start   DATETIME(3) NOT NULL COMMENT 'UTC',
    window_seconds INT         NOT NULL,
    segment        VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
    country        VARCHAR(8)  COLLATE utf8mb4_bin NOT NULL,
    count          BIGINT      NOT NULL,
    value_sum      DOUBLE      NOT NULL,
    final          BOOL        NOT NULL DEFAULT FALSE,
    updated_at     DATETIME(3) NOT NULL COMMENT 'UTC',
    PRIMARY KEY (window_start, window_seconds, segment, country)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

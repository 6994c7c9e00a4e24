-- Users: the source of truth for enrichment (cached in Redis by collector.sources).
CREATE TABLE IF NOT EXISTS users (
    user_id    VARCHAR(64) COLLATE utf8mb4_bin NOT NULL COMMENT 'case-sensitive, like cache keys',
    segment    VARCHAR(64) NOT NULL,
    country    VARCHAR(8)  NOT NULL,
    plan       VARCHAR(32) NOT NULL,
    signup_at  DATETIME(3) NOT NULL COMMENT 'UTC',
    updated_at DATETIME(3) NOT NULL COMMENT 'UTC',
    PRIMARY KEY (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

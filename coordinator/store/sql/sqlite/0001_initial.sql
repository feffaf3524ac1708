-- postroom schema, version 1. Columns mirror the dataclasses of coordinator/domain.py.
-- Times are REAL seconds since the Unix epoch; booleans are INTEGER 0/1; tuples, lists and
-- mappings are JSON text. Applied once, in one transaction, by coordinator/store/migrations.py.

CREATE TABLE posts (
    id              TEXT NOT NULL PRIMARY KEY,
    text            TEXT NOT NULL,
    media           TEXT NOT NULL,          -- JSON ["asset", ...]
    targets         TEXT NOT NULL,          -- JSON [{"platform": ..., "account": ...}, ...]
    scheduled_at    REAL,
    status          TEXT NOT NULL,
    content_hash    TEXT NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    approved_hash   TEXT NOT NULL,
    approved_by     TEXT NOT NULL,
    max_attempts    INTEGER NOT NULL,
    require_confirm INTEGER NOT NULL
);
-- list_posts pages newest first, with or without a status filter.
CREATE INDEX posts_created_idx ON posts (created_at, id);
CREATE INDEX posts_status_created_idx ON posts (status, created_at, id);

CREATE TABLE jobs (
    id                 TEXT NOT NULL PRIMARY KEY,
    post_id            TEXT NOT NULL REFERENCES posts (id),
    platform           TEXT NOT NULL,
    account            TEXT NOT NULL,
    status             TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL UNIQUE,
    platform_key       TEXT NOT NULL,
    content_hash       TEXT NOT NULL,
    text               TEXT NOT NULL,
    media              TEXT NOT NULL,       -- JSON ["asset", ...]
    scheduled_at       REAL NOT NULL,
    created_at         REAL NOT NULL,
    updated_at         REAL NOT NULL,
    not_before         REAL NOT NULL,
    max_attempts       INTEGER NOT NULL,
    attempt            INTEGER NOT NULL,
    rate_limited_count INTEGER NOT NULL,
    lease_epoch        INTEGER NOT NULL,
    device_id          TEXT NOT NULL,
    lease_expires_at   REAL,
    committed_epoch    INTEGER NOT NULL,
    verify_first       INTEGER NOT NULL,
    require_confirm    INTEGER NOT NULL,
    last_error_class   TEXT,
    last_error         TEXT NOT NULL,
    result_post_id     TEXT NOT NULL,
    result_url         TEXT NOT NULL
);
CREATE INDEX jobs_status_idx ON jobs (status);
CREATE INDEX jobs_post_idx ON jobs (post_id);
CREATE INDEX jobs_target_status_idx ON jobs (platform, account, status);

CREATE TABLE runs (
    id          TEXT NOT NULL PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    attempt     INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    lease_epoch INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    outcome     TEXT NOT NULL,
    error_class TEXT,
    error       TEXT NOT NULL,
    committed   INTEGER NOT NULL,
    failed_step TEXT NOT NULL
);
CREATE INDEX runs_job_idx ON runs (job_id);

-- seq is the rowid: it keeps a run's entries in the order they arrived.
CREATE TABLE step_logs (
    seq     INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    step    TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    at      REAL NOT NULL
);
CREATE INDEX step_logs_run_idx ON step_logs (run_id, seq);

CREATE TABLE screenshots (
    seq          INTEGER PRIMARY KEY,
    run_id       TEXT NOT NULL REFERENCES runs (id),
    asset_id     TEXT NOT NULL,
    label        TEXT NOT NULL,
    size_bytes   INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    at           REAL NOT NULL
);
CREATE INDEX screenshots_run_idx ON screenshots (run_id, seq);

-- AUTOINCREMENT: a seq is never handed out twice, so audit readers can resume after_seq.
CREATE TABLE audit_events (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    at                REAL NOT NULL,
    action            TEXT NOT NULL,
    subject_id        TEXT NOT NULL,
    actor             TEXT NOT NULL,
    details_json      TEXT NOT NULL,
    execution_time_ms INTEGER NOT NULL
);
CREATE INDEX audit_events_at_idx ON audit_events (at);
CREATE INDEX audit_events_subject_idx ON audit_events (subject_id);

CREATE TABLE devices (
    id           TEXT NOT NULL PRIMARY KEY,
    kind         TEXT NOT NULL,
    capabilities TEXT NOT NULL,             -- JSON [{"platform": ..., "account": ...}, ...]
    slots        INTEGER NOT NULL,
    last_seen_at REAL NOT NULL,
    version      TEXT NOT NULL,
    logins       TEXT NOT NULL              -- JSON [{"platform", "account", "state", "checked_at", "message"}]
);

CREATE TABLE gates (
    platform     TEXT NOT NULL,
    account      TEXT NOT NULL,
    closed_until REAL NOT NULL,
    reason       TEXT NOT NULL,
    hits         INTEGER NOT NULL,
    PRIMARY KEY (platform, account)
);

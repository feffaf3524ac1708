-- postroom schema for PostgreSQL, version 1: the tables of SQLite's migrations 0001-0003, column
-- for column. Times are DOUBLE PRECISION seconds since the Unix epoch; booleans are INTEGER 0/1
-- and tuples, lists and mappings JSON text, as in SQLite, so both backends bind the same
-- parameters (coordinator/store/rows.py). Applied once, in one transaction.

CREATE TABLE posts (
    id              TEXT NOT NULL PRIMARY KEY,
    text            TEXT NOT NULL,
    media           TEXT NOT NULL,
    targets         TEXT NOT NULL,
    scheduled_at    DOUBLE PRECISION,
    status          TEXT NOT NULL,
    content_hash    TEXT NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    approved_hash   TEXT NOT NULL,
    approved_by     TEXT NOT NULL,
    max_attempts    INTEGER NOT NULL,
    require_confirm INTEGER NOT NULL
);
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
    media              TEXT NOT NULL,
    scheduled_at       DOUBLE PRECISION NOT NULL,
    created_at         DOUBLE PRECISION NOT NULL,
    updated_at         DOUBLE PRECISION NOT NULL,
    not_before         DOUBLE PRECISION NOT NULL,
    max_attempts       INTEGER NOT NULL,
    attempt            INTEGER NOT NULL,
    rate_limited_count INTEGER NOT NULL,
    lease_epoch        BIGINT NOT NULL,
    device_id          TEXT NOT NULL,
    lease_expires_at   DOUBLE PRECISION,
    committed_epoch    BIGINT NOT NULL,
    verify_first       INTEGER NOT NULL,
    require_confirm    INTEGER NOT NULL,
    last_error_class   TEXT,
    last_error         TEXT NOT NULL,
    result_post_id     TEXT NOT NULL,
    result_url         TEXT NOT NULL,
    resolved_by        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_status_idx ON jobs (status);
CREATE INDEX jobs_post_idx ON jobs (post_id);
CREATE INDEX jobs_target_status_idx ON jobs (platform, account, status);

-- seq stands in for SQLite's rowid: a job's runs that started at the same time keep the order
-- they were first written in.
CREATE TABLE runs (
    id          TEXT NOT NULL PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    attempt     INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    lease_epoch BIGINT NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    ended_at    DOUBLE PRECISION,
    outcome     TEXT NOT NULL,
    error_class TEXT,
    error       TEXT NOT NULL,
    committed   INTEGER NOT NULL,
    failed_step TEXT NOT NULL,
    seq         BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX runs_job_idx ON runs (job_id);

CREATE TABLE step_logs (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    step    TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX step_logs_run_idx ON step_logs (run_id, seq);

CREATE TABLE screenshots (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       TEXT NOT NULL REFERENCES runs (id),
    asset_id     TEXT NOT NULL,
    label        TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    at           DOUBLE PRECISION NOT NULL
);
CREATE INDEX screenshots_run_idx ON screenshots (run_id, seq);

-- seq is given by the store, max + 1 under a table lock (queries.sql: lock_audit), not by a
-- sequence: a sequence would leave gaps after rollbacks and could commit 5 before 4, and an
-- audit reader resuming after_seq 5 would never see 4.
CREATE TABLE audit_events (
    seq               BIGINT NOT NULL PRIMARY KEY,
    at                DOUBLE PRECISION NOT NULL,
    action            TEXT NOT NULL,
    subject_id        TEXT NOT NULL,
    actor             TEXT NOT NULL,
    details_json      TEXT NOT NULL,
    execution_time_ms BIGINT NOT NULL
);
CREATE INDEX audit_events_at_idx ON audit_events (at);
CREATE INDEX audit_events_subject_idx ON audit_events (subject_id);

CREATE TABLE devices (
    id                TEXT NOT NULL PRIMARY KEY,
    kind              TEXT NOT NULL,
    capabilities      TEXT NOT NULL,
    slots             INTEGER NOT NULL,
    last_seen_at      DOUBLE PRECISION NOT NULL,
    version           TEXT NOT NULL,
    logins            TEXT NOT NULL,
    per_account_slots INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE gates (
    platform     TEXT NOT NULL,
    account      TEXT NOT NULL,
    closed_until DOUBLE PRECISION NOT NULL,
    reason       TEXT NOT NULL,
    hits         INTEGER NOT NULL,
    PRIMARY KEY (platform, account)
);

CREATE TABLE operator_tokens (
    id          TEXT NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  DOUBLE PRECISION NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  DOUBLE PRECISION
);

CREATE TABLE device_enrollments (
    name        TEXT NOT NULL PRIMARY KEY,
    accounts    TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  DOUBLE PRECISION NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  DOUBLE PRECISION
);

-- A compare-and-set statement that changed no row calls this (queries.sql: update_post,
-- update_job): the error rolls the batch back, and its SQLSTATE tells the store which stage missed.
CREATE FUNCTION postroom_missed(stage TEXT) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'PRCAS', MESSAGE = stage || ' changed no row';
END
$$;

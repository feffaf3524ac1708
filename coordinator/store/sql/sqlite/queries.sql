-- Named queries of the SQLite store, loaded by coordinator/store/migrations.py:load_queries()
-- with the ones both stores share (../shared_queries.sql). Each starts at a "-- name: <name>" line and runs to the next one. Parameters are named
-- (:column) and bound from the dicts of coordinator/store/rows.py. Lists of values are passed
-- as one JSON array and unpacked with json_each, so every statement keeps one shape and stays
-- prepared across executemany calls.

-- name: update_post
-- Compare-and-set: :expected is "|STATUS|STATUS|"; a miss changes no row. id and created_at
-- never change (the index on them is not rewritten).
UPDATE posts SET
    text = :text, media = :media, targets = :targets, scheduled_at = :scheduled_at,
    status = :status, content_hash = :content_hash,
    updated_at = :updated_at, approved_hash = :approved_hash, approved_by = :approved_by,
    max_attempts = :max_attempts, require_confirm = :require_confirm
WHERE id = :id AND instr(:expected, '|' || status || '|') > 0;

-- name: update_job
-- Compare-and-set on (status, lease_epoch): :expected is "|STATUS|STATUS|". A job's identity
-- (post_id, platform, account, idempotency_key, created_at) never changes: left out of the SET,
-- its indexes are not rewritten on every transition (half of an UPDATE's cost).
UPDATE jobs SET
    status = :status, platform_key = :platform_key,
    content_hash = :content_hash, text = :text, media = :media, scheduled_at = :scheduled_at,
    updated_at = :updated_at, not_before = :not_before,
    max_attempts = :max_attempts, attempt = :attempt, rate_limited_count = :rate_limited_count,
    lease_epoch = :lease_epoch, device_id = :device_id, lease_expires_at = :lease_expires_at,
    committed_epoch = :committed_epoch, verify_first = :verify_first,
    require_confirm = :require_confirm, last_error_class = :last_error_class,
    last_error = :last_error, result_post_id = :result_post_id, result_url = :result_url,
    resolved_by = :resolved_by, lost_looks = :lost_looks
WHERE id = :id AND lease_epoch = :expected_epoch AND instr(:expected, '|' || status || '|') > 0;

-- name: upsert_run
-- ON CONFLICT DO UPDATE keeps the row (and its rowid, which orders a job's runs); INSERT OR
-- REPLACE would delete it and trip the foreign keys of its logs. A run's job never changes (its
-- index is not rewritten).
INSERT INTO runs (
    id, job_id, attempt, device_id, lease_epoch, started_at, ended_at, outcome, error_class,
    error, committed, failed_step
) VALUES (
    :id, :job_id, :attempt, :device_id, :lease_epoch, :started_at, :ended_at, :outcome,
    :error_class, :error, :committed, :failed_step
) ON CONFLICT (id) DO UPDATE SET
    attempt = excluded.attempt, device_id = excluded.device_id,
    lease_epoch = excluded.lease_epoch, started_at = excluded.started_at,
    ended_at = excluded.ended_at, outcome = excluded.outcome, error_class = excluded.error_class,
    error = excluded.error, committed = excluded.committed, failed_step = excluded.failed_step;

-- name: insert_audit
INSERT INTO audit_events (at, action, subject_id, actor, details_json, execution_time_ms)
VALUES (:at, :action, :subject_id, :actor, :details_json, :execution_time_ms);

-- name: last_seq
SELECT last_insert_rowid();

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL);

-- name: list_posts
SELECT * FROM posts
WHERE (:status IS NULL OR status = :status)
  AND (:before_at IS NULL OR (created_at, id) < (:before_at, :before_id))
ORDER BY created_at DESC, id DESC
LIMIT :limit OFFSET :offset;

-- name: jobs_for_posts
SELECT * FROM jobs
WHERE post_id IN (SELECT value FROM json_each(:post_ids))
ORDER BY created_at, id;

-- name: list_jobs
SELECT * FROM jobs
WHERE (:status IS NULL OR status = :status)
  AND (:platform = '' OR platform = :platform)
  AND (:account = '' OR account = :account)
  AND (:post_id = '' OR post_id = :post_id)
  AND (:device_id = '' OR device_id = :device_id)
  AND (:before_at IS NULL OR (created_at, id) < (:before_at, :before_id))
ORDER BY created_at DESC, id DESC
LIMIT :limit OFFSET :offset;

-- name: load_active_jobs
SELECT * FROM jobs
WHERE status IN (SELECT value FROM json_each(:statuses))
ORDER BY created_at, id;

-- name: job_states_in
-- What a failed batch is diagnosed against: the rows it named, as they are now.
SELECT id, status, lease_epoch, idempotency_key FROM jobs
WHERE id IN (SELECT value FROM json_each(:ids))
   OR idempotency_key IN (SELECT value FROM json_each(:keys));

-- name: post_states_in
SELECT id, status FROM posts WHERE id IN (SELECT value FROM json_each(:ids));

-- name: runs_for_job
SELECT * FROM runs WHERE job_id = :job_id ORDER BY started_at, rowid;

-- name: list_audit
SELECT * FROM audit_events
WHERE seq > :after_seq
  AND (:since IS NULL OR at >= :since)
  AND (:subject_id = '' OR subject_id = :subject_id)
  AND (:action = '' OR action = :action)
ORDER BY seq
LIMIT :limit;

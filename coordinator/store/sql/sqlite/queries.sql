-- Named queries of the SQLite store, loaded by coordinator/store/migrations.py:load_queries().
-- Each starts at a "-- name: <name>" line and runs to the next one. Parameters are named
-- (:column) and bound from the dicts of coordinator/store/rows.py. Lists of values are passed
-- as one JSON array and unpacked with json_each, so every statement keeps one shape and stays
-- prepared across executemany calls.

-- name: insert_post
INSERT INTO posts (
    id, text, media, targets, scheduled_at, status, content_hash, created_at, updated_at,
    approved_hash, approved_by, max_attempts, require_confirm
) VALUES (
    :id, :text, :media, :targets, :scheduled_at, :status, :content_hash, :created_at, :updated_at,
    :approved_hash, :approved_by, :max_attempts, :require_confirm
);

-- name: update_post
-- Compare-and-set: :expected is "|STATUS|STATUS|"; a miss changes no row.
UPDATE posts SET
    text = :text, media = :media, targets = :targets, scheduled_at = :scheduled_at,
    status = :status, content_hash = :content_hash, created_at = :created_at,
    updated_at = :updated_at, approved_hash = :approved_hash, approved_by = :approved_by,
    max_attempts = :max_attempts, require_confirm = :require_confirm
WHERE id = :id AND instr(:expected, '|' || status || '|') > 0;

-- name: insert_job
INSERT INTO jobs (
    id, post_id, platform, account, status, idempotency_key, platform_key, content_hash, text,
    media, scheduled_at, created_at, updated_at, not_before, max_attempts, attempt,
    rate_limited_count, lease_epoch, device_id, lease_expires_at, committed_epoch, verify_first,
    require_confirm, last_error_class, last_error, result_post_id, result_url, resolved_by
) VALUES (
    :id, :post_id, :platform, :account, :status, :idempotency_key, :platform_key, :content_hash,
    :text, :media, :scheduled_at, :created_at, :updated_at, :not_before, :max_attempts, :attempt,
    :rate_limited_count, :lease_epoch, :device_id, :lease_expires_at, :committed_epoch,
    :verify_first, :require_confirm, :last_error_class, :last_error, :result_post_id, :result_url,
    :resolved_by
);

-- name: update_job
-- Compare-and-set on (status, lease_epoch): :expected is "|STATUS|STATUS|".
UPDATE jobs SET
    post_id = :post_id, platform = :platform, account = :account, status = :status,
    idempotency_key = :idempotency_key, platform_key = :platform_key,
    content_hash = :content_hash, text = :text, media = :media, scheduled_at = :scheduled_at,
    created_at = :created_at, updated_at = :updated_at, not_before = :not_before,
    max_attempts = :max_attempts, attempt = :attempt, rate_limited_count = :rate_limited_count,
    lease_epoch = :lease_epoch, device_id = :device_id, lease_expires_at = :lease_expires_at,
    committed_epoch = :committed_epoch, verify_first = :verify_first,
    require_confirm = :require_confirm, last_error_class = :last_error_class,
    last_error = :last_error, result_post_id = :result_post_id, result_url = :result_url,
    resolved_by = :resolved_by
WHERE id = :id AND lease_epoch = :expected_epoch AND instr(:expected, '|' || status || '|') > 0;

-- name: upsert_run
-- ON CONFLICT DO UPDATE keeps the row (and its rowid, which orders a job's runs); INSERT OR
-- REPLACE would delete it and trip the foreign keys of its logs.
INSERT INTO runs (
    id, job_id, attempt, device_id, lease_epoch, started_at, ended_at, outcome, error_class,
    error, committed, failed_step
) VALUES (
    :id, :job_id, :attempt, :device_id, :lease_epoch, :started_at, :ended_at, :outcome,
    :error_class, :error, :committed, :failed_step
) ON CONFLICT (id) DO UPDATE SET
    job_id = excluded.job_id, attempt = excluded.attempt, device_id = excluded.device_id,
    lease_epoch = excluded.lease_epoch, started_at = excluded.started_at,
    ended_at = excluded.ended_at, outcome = excluded.outcome, error_class = excluded.error_class,
    error = excluded.error, committed = excluded.committed, failed_step = excluded.failed_step;

-- name: insert_log
INSERT INTO step_logs (run_id, step, level, message, at)
VALUES (:run_id, :step, :level, :message, :at);

-- name: insert_screenshot
INSERT INTO screenshots (run_id, asset_id, label, size_bytes, content_type, at)
VALUES (:run_id, :asset_id, :label, :size_bytes, :content_type, :at);

-- name: insert_audit
INSERT INTO audit_events (at, action, subject_id, actor, details_json, execution_time_ms)
VALUES (:at, :action, :subject_id, :actor, :details_json, :execution_time_ms);

-- name: last_seq
SELECT last_insert_rowid();

-- name: upsert_device
INSERT INTO devices (
    id, kind, capabilities, slots, last_seen_at, version, logins, per_account_slots
) VALUES (
    :id, :kind, :capabilities, :slots, :last_seen_at, :version, :logins, :per_account_slots
) ON CONFLICT (id) DO UPDATE SET
    kind = excluded.kind, capabilities = excluded.capabilities, slots = excluded.slots,
    last_seen_at = excluded.last_seen_at, version = excluded.version, logins = excluded.logins,
    per_account_slots = excluded.per_account_slots;

-- name: delete_post_screenshots
DELETE FROM screenshots WHERE run_id IN (
    SELECT runs.id FROM runs JOIN jobs ON runs.job_id = jobs.id WHERE jobs.post_id = :post_id
);

-- name: delete_post_logs
DELETE FROM step_logs WHERE run_id IN (
    SELECT runs.id FROM runs JOIN jobs ON runs.job_id = jobs.id WHERE jobs.post_id = :post_id
);

-- name: delete_post_runs
DELETE FROM runs WHERE job_id IN (SELECT id FROM jobs WHERE post_id = :post_id);

-- name: delete_post_jobs
DELETE FROM jobs WHERE post_id = :post_id;

-- name: delete_post
DELETE FROM posts WHERE id = :post_id;

-- name: upsert_gate
INSERT INTO gates (platform, account, closed_until, reason, hits)
VALUES (:platform, :account, :closed_until, :reason, :hits)
ON CONFLICT (platform, account) DO UPDATE SET
    closed_until = excluded.closed_until, reason = excluded.reason, hits = excluded.hits;

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL);

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, applied_at) VALUES (:version, :applied_at);

-- name: get_post
SELECT * FROM posts WHERE id = :id;

-- name: list_posts
SELECT * FROM posts
WHERE (:status IS NULL OR status = :status)
  AND (:before_at IS NULL OR (created_at, id) < (:before_at, :before_id))
ORDER BY created_at DESC, id DESC
LIMIT :limit OFFSET :offset;

-- name: get_job
SELECT * FROM jobs WHERE id = :id;

-- name: get_job_by_key
SELECT * FROM jobs WHERE idempotency_key = :key;

-- name: jobs_for_post
SELECT * FROM jobs WHERE post_id = :post_id ORDER BY created_at, id;

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

-- name: logs_for_job
SELECT step_logs.* FROM step_logs JOIN runs ON runs.id = step_logs.run_id
WHERE runs.job_id = :job_id
ORDER BY step_logs.seq;

-- name: screenshots_for_job
SELECT screenshots.* FROM screenshots JOIN runs ON runs.id = screenshots.run_id
WHERE runs.job_id = :job_id
ORDER BY screenshots.seq;

-- name: list_audit
SELECT * FROM audit_events
WHERE seq > :after_seq
  AND (:since IS NULL OR at >= :since)
  AND (:subject_id = '' OR subject_id = :subject_id)
  AND (:action = '' OR action = :action)
ORDER BY seq
LIMIT :limit;

-- name: last_audit_seq
SELECT COALESCE(MAX(seq), 0) AS n FROM audit_events;

-- name: list_devices
SELECT * FROM devices ORDER BY id;

-- name: list_gates
SELECT * FROM gates ORDER BY platform, account;

-- name: count_jobs
SELECT status, platform, count(*) AS n FROM jobs GROUP BY status, platform;

-- name: count_commits_since
-- A run's started_at stands in for the moment its commit permit was granted: the permit comes
-- within the run's lease, seconds to minutes after the start, which is close enough for
-- rebuilding posts-per-24h quotas (the window is a day).
SELECT count(*) FROM runs JOIN jobs ON jobs.id = runs.job_id
WHERE jobs.platform = :platform AND jobs.account = :account
  AND runs.committed = 1 AND runs.started_at >= :since;

-- name: upsert_operator_token
INSERT INTO operator_tokens (id, name, role, token_hash, created_at, created_by, revoked_at)
VALUES (:id, :name, :role, :token_hash, :created_at, :created_by, :revoked_at)
ON CONFLICT (id) DO UPDATE SET revoked_at = excluded.revoked_at;

-- name: list_operator_tokens
SELECT * FROM operator_tokens ORDER BY created_at, id;

-- name: upsert_enrollment
-- Re-enrolling (rotation) replaces the token and accounts of the device's one row.
INSERT INTO device_enrollments (name, accounts, token_hash, created_at, created_by, revoked_at)
VALUES (:name, :accounts, :token_hash, :created_at, :created_by, :revoked_at)
ON CONFLICT (name) DO UPDATE SET
    accounts = excluded.accounts, token_hash = excluded.token_hash,
    created_at = excluded.created_at, created_by = excluded.created_by,
    revoked_at = excluded.revoked_at;

-- name: list_enrollments
SELECT * FROM device_enrollments ORDER BY name;

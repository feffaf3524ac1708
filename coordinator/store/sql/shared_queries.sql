-- Named queries both SQL stores run as they are (coordinator/store/migrations.py:load_queries()
-- adds them to each dialect's own queries.sql; a name lives in one file only). Each starts at a
-- "-- name: <name>" line and runs to the next one. Parameters are named (:column) and bound from
-- the dicts of coordinator/store/rows.py.

-- name: insert_post
INSERT INTO posts (
    id, text, media, targets, scheduled_at, status, content_hash, created_at, updated_at,
    approved_hash, approved_by, max_attempts, require_confirm
) VALUES (
    :id, :text, :media, :targets, :scheduled_at, :status, :content_hash, :created_at, :updated_at,
    :approved_hash, :approved_by, :max_attempts, :require_confirm
);

-- name: insert_job
INSERT INTO jobs (
    id, post_id, platform, account, status, idempotency_key, platform_key, content_hash, text,
    media, scheduled_at, created_at, updated_at, not_before, max_attempts, attempt,
    rate_limited_count, lease_epoch, device_id, lease_expires_at, committed_epoch, verify_first,
    require_confirm, last_error_class, last_error, result_post_id, result_url, resolved_by,
    lost_looks
) VALUES (
    :id, :post_id, :platform, :account, :status, :idempotency_key, :platform_key, :content_hash,
    :text, :media, :scheduled_at, :created_at, :updated_at, :not_before, :max_attempts, :attempt,
    :rate_limited_count, :lease_epoch, :device_id, :lease_expires_at, :committed_epoch,
    :verify_first, :require_confirm, :last_error_class, :last_error, :result_post_id, :result_url,
    :resolved_by, :lost_looks
);

-- name: insert_log
INSERT INTO step_logs (run_id, step, level, message, at)
VALUES (:run_id, :step, :level, :message, :at);

-- name: insert_screenshot
INSERT INTO screenshots (run_id, asset_id, label, size_bytes, content_type, at)
VALUES (:run_id, :asset_id, :label, :size_bytes, :content_type, :at);

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

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, applied_at) VALUES (:version, :applied_at);

-- name: get_post
SELECT * FROM posts WHERE id = :id;

-- name: get_job
SELECT * FROM jobs WHERE id = :id;

-- name: get_job_by_key
SELECT * FROM jobs WHERE idempotency_key = :key;

-- name: jobs_for_post
SELECT * FROM jobs WHERE post_id = :post_id ORDER BY created_at, id;

-- name: logs_for_job
SELECT step_logs.* FROM step_logs JOIN runs ON runs.id = step_logs.run_id
WHERE runs.job_id = :job_id
ORDER BY step_logs.seq;

-- name: screenshots_for_job
SELECT screenshots.* FROM screenshots JOIN runs ON runs.id = screenshots.run_id
WHERE runs.job_id = :job_id
ORDER BY screenshots.seq;

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
SELECT count(*) AS n FROM runs JOIN jobs ON jobs.id = runs.job_id
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

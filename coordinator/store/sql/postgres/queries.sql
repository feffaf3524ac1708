-- Named queries of the PostgreSQL store (with ../shared_queries.sql): the SQLite store's, by the
-- same names and with the same :named parameters, which coordinator/store/postgres.py numbers
-- $1, $2... when it loads them (::type casts are left alone). Lists of values come as one JSON
-- array, unpacked with json_array_elements_text. Parameters only tested against NULL are cast,
-- so the server knows their type.

-- name: update_post
-- Compare-and-set: :expected is "|STATUS|STATUS|"; a miss changes no row and raises PRCAS.
WITH hit AS (UPDATE posts SET
    text = :text, media = :media, targets = :targets, scheduled_at = :scheduled_at,
    status = :status, content_hash = :content_hash, created_at = :created_at,
    updated_at = :updated_at, approved_hash = :approved_hash, approved_by = :approved_by,
    max_attempts = :max_attempts, require_confirm = :require_confirm
WHERE id = :id AND strpos(:expected, '|' || status || '|') > 0 RETURNING 1)
SELECT postroom_missed('post_writes') WHERE NOT EXISTS (SELECT FROM hit);

-- name: update_job
-- Compare-and-set on (status, lease_epoch): :expected is "|STATUS|STATUS|"; a miss raises PRCAS.
WITH hit AS (UPDATE jobs SET
    post_id = :post_id, platform = :platform, account = :account, status = :status,
    idempotency_key = :idempotency_key, platform_key = :platform_key,
    content_hash = :content_hash, text = :text, media = :media, scheduled_at = :scheduled_at,
    created_at = :created_at, updated_at = :updated_at, not_before = :not_before,
    max_attempts = :max_attempts, attempt = :attempt, rate_limited_count = :rate_limited_count,
    lease_epoch = :lease_epoch, device_id = :device_id, lease_expires_at = :lease_expires_at,
    committed_epoch = :committed_epoch, verify_first = :verify_first,
    require_confirm = :require_confirm, last_error_class = :last_error_class,
    last_error = :last_error, result_post_id = :result_post_id, result_url = :result_url,
    resolved_by = :resolved_by, lost_looks = :lost_looks
WHERE id = :id AND lease_epoch = :expected_epoch AND strpos(:expected, '|' || status || '|') > 0
RETURNING 1)
SELECT postroom_missed('job_writes') WHERE NOT EXISTS (SELECT FROM hit);

-- name: upsert_run
-- ON CONFLICT DO UPDATE keeps the row and its seq, which orders a job's runs.
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

-- name: lock_audit
-- Held to the end of the batch's transaction: batches that write audit events number them one
-- at a time, so seqs are handed out in commit order. Readers are not blocked.
LOCK TABLE audit_events IN SHARE ROW EXCLUSIVE MODE;

-- name: insert_audit
INSERT INTO audit_events (seq, at, action, subject_id, actor, details_json, execution_time_ms)
VALUES (:seq, :at, :action, :subject_id, :actor, :details_json, :execution_time_ms);

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION
);

-- name: lock_schema_migrations
-- Two processes opening one fresh database: the second waits, then finds the versions applied.
LOCK TABLE schema_migrations IN EXCLUSIVE MODE;

-- name: list_posts
SELECT * FROM posts
WHERE (:status::text IS NULL OR status = :status)
  AND (:before_at::float8 IS NULL OR (created_at, id) < (:before_at, :before_id::text))
ORDER BY created_at DESC, id DESC
LIMIT CASE WHEN :limit < 0 THEN NULL ELSE :limit END OFFSET greatest(:offset, 0);

-- name: jobs_for_posts
SELECT * FROM jobs
WHERE post_id IN (SELECT value FROM json_array_elements_text(:post_ids::json))
ORDER BY created_at, id;

-- name: list_jobs
SELECT * FROM jobs
WHERE (:status::text IS NULL OR status = :status)
  AND (:platform = '' OR platform = :platform)
  AND (:account = '' OR account = :account)
  AND (:post_id = '' OR post_id = :post_id)
  AND (:device_id = '' OR device_id = :device_id)
  AND (:before_at::float8 IS NULL OR (created_at, id) < (:before_at, :before_id::text))
ORDER BY created_at DESC, id DESC
LIMIT CASE WHEN :limit < 0 THEN NULL ELSE :limit END OFFSET greatest(:offset, 0);

-- name: load_active_jobs
SELECT * FROM jobs
WHERE status IN (SELECT value FROM json_array_elements_text(:statuses::json))
ORDER BY created_at, id;

-- name: job_states_in
-- What a failed batch is diagnosed against: the rows it named, as they are now.
SELECT id, status, lease_epoch, idempotency_key FROM jobs
WHERE id IN (SELECT value FROM json_array_elements_text(:ids::json))
   OR idempotency_key IN (SELECT value FROM json_array_elements_text(:keys::json));

-- name: post_states_in
SELECT id, status FROM posts WHERE id IN (SELECT value FROM json_array_elements_text(:ids::json));

-- name: runs_for_job
SELECT * FROM runs WHERE job_id = :job_id ORDER BY started_at, seq;

-- name: list_audit
SELECT * FROM audit_events
WHERE seq > :after_seq
  AND (:since::float8 IS NULL OR at >= :since)
  AND (:subject_id = '' OR subject_id = :subject_id)
  AND (:action = '' OR action = :action)
ORDER BY seq
LIMIT CASE WHEN :limit < 0 THEN NULL ELSE :limit END;

-- Shard ownership and leaders (0002_ownership.sql; coordinator/store/ownership.py). :now is the
-- caller's clock, or NULL for the server's, the one clock every coordinator shares.

-- name: count_shards
SELECT count(*) AS n FROM shard_owners;

-- name: create_shards
INSERT INTO shard_owners (shard, owner, epoch, heartbeat_at, expires_at)
SELECT s, '', 0, 0, 0 FROM generate_series(0, :count::int - 1) AS s
ON CONFLICT (shard) DO NOTHING;

-- name: claim_shards
-- At most :want shards nobody holds or whose owner's lease ran out, lowest first (only those
-- listed in :only, a JSON array, unless it is NULL), each one epoch up. Rows another transaction
-- holds are skipped: a take-over racing this one, or a batch under the shard's fence. With
-- :reclaim, also the shards still held under :owner's name: a coordinator restarted with the same
-- name takes its predecessor's at once (one epoch up, so the predecessor can write no more).
WITH clock AS (SELECT coalesce(:now::float8, extract(epoch FROM clock_timestamp())::float8) AS t),
free AS (
    SELECT shard FROM shard_owners, clock
    WHERE (expires_at <= clock.t OR (:reclaim::bool AND owner = :owner))
      AND (:only::text IS NULL
           OR shard IN (SELECT value::int FROM json_array_elements_text(:only::json)))
    ORDER BY shard
    LIMIT :want
    FOR UPDATE OF shard_owners SKIP LOCKED
)
UPDATE shard_owners AS s
SET owner = :owner, epoch = s.epoch + 1, heartbeat_at = clock.t, expires_at = clock.t + :ttl_s
FROM free, clock
WHERE s.shard = free.shard
RETURNING s.shard, s.owner, s.epoch, s.expires_at;

-- name: renew_shards
-- :leases is a JSON array of {"shard", "epoch"}; a shard whose epoch moved is not renewed.
-- Rows are locked in shard order, as hold_shards locks them: a renewal and the owner's own
-- fenced batch wait for each other, never in a cycle.
WITH clock AS (SELECT coalesce(:now::float8, extract(epoch FROM clock_timestamp())::float8) AS t),
mine AS (
    SELECT s.shard FROM shard_owners AS s
    JOIN json_to_recordset(:leases::json) AS held (shard int, epoch bigint)
      ON s.shard = held.shard AND s.epoch = held.epoch
    WHERE s.owner = :owner
    ORDER BY s.shard
    FOR UPDATE OF s
)
UPDATE shard_owners AS s
SET heartbeat_at = clock.t, expires_at = clock.t + :ttl_s
FROM clock, mine
WHERE s.shard = mine.shard
RETURNING s.shard, s.owner, s.epoch, s.expires_at;

-- name: release_shards
UPDATE shard_owners AS s SET expires_at = 0
FROM json_to_recordset(:leases::json) AS held (shard int, epoch bigint)
WHERE s.shard = held.shard AND s.epoch = held.epoch AND s.owner = :owner;

-- name: hold_shards
-- A fenced batch's first statement: its shards, still at the epochs it holds, locked until it
-- commits, so no take-over lands in between (claim_shards skips them). In shard order (ORDER BY
-- comes before the locking), as renew_shards locks them.
SELECT s.shard FROM shard_owners AS s
JOIN json_to_recordset(:leases::json) AS held (shard int, epoch bigint)
  ON s.shard = held.shard AND s.epoch = held.epoch
WHERE s.owner = :owner
ORDER BY s.shard
FOR SHARE OF s;

-- name: list_shard_owners
SELECT shard, owner, epoch, expires_at FROM shard_owners ORDER BY shard;

-- name: elect_leader
-- Become the leader of :duty if nobody is or the leader's lease ran out (one epoch up), or stay
-- it (same epoch, lease extended). No row comes back while another leader's lease holds.
WITH clock AS (SELECT coalesce(:now::float8, extract(epoch FROM clock_timestamp())::float8) AS t)
INSERT INTO leaders AS l (duty, owner, epoch, elected_at, expires_at)
SELECT :duty, :owner, 1, clock.t, clock.t + :ttl_s FROM clock
ON CONFLICT (duty) DO UPDATE SET
    owner = excluded.owner,
    epoch = CASE WHEN l.owner = excluded.owner AND l.expires_at > excluded.elected_at
                 THEN l.epoch ELSE l.epoch + 1 END,
    elected_at = CASE WHEN l.owner = excluded.owner AND l.expires_at > excluded.elected_at
                      THEN l.elected_at ELSE excluded.elected_at END,
    expires_at = excluded.expires_at
WHERE l.owner = excluded.owner OR l.expires_at <= excluded.elected_at
RETURNING duty, owner, epoch, expires_at;

-- name: hold_leader
SELECT duty FROM leaders WHERE duty = :duty AND owner = :owner AND epoch = :epoch FOR SHARE;

-- name: resign_leader
UPDATE leaders SET expires_at = 0 WHERE duty = :duty AND owner = :owner AND epoch = :epoch;

-- name: heartbeat_coordinator
-- Also forgets coordinators silent for a day (crashed ones under names never used again).
WITH clock AS (SELECT coalesce(:now::float8, extract(epoch FROM clock_timestamp())::float8) AS t),
forgotten AS (DELETE FROM coordinators USING clock WHERE expires_at < clock.t - 86400)
INSERT INTO coordinators (owner, heartbeat_at, expires_at, address)
SELECT :owner, clock.t, clock.t + :ttl_s, :address FROM clock
ON CONFLICT (owner) DO UPDATE SET
    heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at,
    address = excluded.address;

-- name: live_coordinators
WITH clock AS (SELECT coalesce(:now::float8, extract(epoch FROM clock_timestamp())::float8) AS t)
SELECT owner FROM coordinators, clock WHERE expires_at > clock.t ORDER BY owner;

-- name: leave_coordinator
DELETE FROM coordinators WHERE owner = :owner;

-- name: shard_holder
-- Who holds :shard now (its lease not run out), with the address it advertises if it is live;
-- no row when nobody does. Shard 0's holder is the active coordinator (coordinator/cluster/).
WITH clock AS (SELECT coalesce(:now::float8, extract(epoch FROM clock_timestamp())::float8) AS t)
SELECT s.owner, s.epoch, coalesce(c.address, '') AS address
FROM shard_owners AS s CROSS JOIN clock
LEFT JOIN coordinators AS c ON c.owner = s.owner AND c.expires_at > clock.t
WHERE s.shard = :shard AND s.owner <> '' AND s.expires_at > clock.t;

-- name: lock_migrations
-- Two processes migrating one database at once: the second waits here, inside its migration
-- transaction, until the first committed (a transaction-level lock: fine behind PgBouncer).
SELECT pg_advisory_xact_lock((:hi::bigint << 32) | :lo::bigint);

-- The one-coordinator lock (postgres.py: PostgresStore(exclusive=True)); the key is one bigint,
-- passed as its two halves as pg_locks shows them.

-- name: try_lock_database
SELECT pg_try_advisory_lock((:hi::bigint << 32) | :lo::bigint) AS ok;

-- name: database_lock_holder
SELECT a.pid, coalesce(host(a.client_addr), 'a local socket') AS client
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = :hi::bigint::oid AND l.objid = :lo::bigint::oid;

-- Post status derived in the store (postgres.py: apply_fenced(derive_posts=True)) and post tasks
-- (0005_post_tasks.sql).

-- name: lock_posts
-- The posts a fenced batch derives the status of (and those it writes), locked in id order
-- (ORDER BY comes before the locking): coordinators deriving one post take turns, never in a
-- cycle.
SELECT id FROM posts
WHERE id IN (SELECT value FROM json_array_elements_text(:ids::json))
ORDER BY id
FOR UPDATE;

-- name: set_post_status
UPDATE posts SET status = :status, updated_at = :updated_at WHERE id = :id;

-- name: insert_post_task
-- created_at 0: the server's clock, the one every coordinator shares.
INSERT INTO post_tasks (shard, post_id, kind, args, created_at)
VALUES (:shard, :post_id, :kind, :args, CASE WHEN :created_at::float8 > 0 THEN :created_at
    ELSE extract(epoch FROM clock_timestamp())::float8 END);

-- name: notify_post_tasks
-- Sent at commit, once per shard however many tasks the transaction inserted for it.
SELECT pg_notify('postroom_post_tasks', :shard::int::text);

-- name: delete_post_task
DELETE FROM post_tasks WHERE id = :id AND shard = :shard;

-- name: pending_post_tasks
SELECT * FROM post_tasks
WHERE shard IN (SELECT value::int FROM json_array_elements_text(:shards::json))
ORDER BY id
LIMIT :limit;

-- name: post_tasks_of_post
SELECT count(*) AS n FROM post_tasks WHERE post_id = :post_id;

-- Placement "spread" (coordinator/cluster/member.py).

-- name: live_shard_holders
-- Every shard whose lease holds and whose holder is a live coordinator, with the address that
-- coordinator advertises: where each shard is served (ClusterRole.owners).
WITH clock AS (SELECT coalesce(:now::float8, extract(epoch FROM clock_timestamp())::float8) AS t)
SELECT s.shard, s.owner, s.epoch, c.address
FROM shard_owners AS s CROSS JOIN clock
JOIN coordinators AS c ON c.owner = s.owner AND c.expires_at > clock.t
WHERE s.owner <> '' AND s.expires_at > clock.t
ORDER BY s.shard;

-- Several active coordinators (placement "spread"): credentials and devices.

-- name: notify_credentials
-- Sent at commit by a batch that writes operator tokens or device enrollments: every
-- coordinator reloads them (coordinator/cluster/credentials.py).
SELECT pg_notify('postroom_credentials', '');

-- name: merge_device
-- upsert_device for coordinators that each write a device's row from their own memory: login
-- badges merge per (platform, account), the latest check winning (the written badge on a tie),
-- so one core's stale copy never undoes a badge another set; last seen is the latest any of
-- them saw. The rest is the written Hello's (the same Hello reaches every owner, but for its
-- slots: fanout.py gives each owner a share, so slots is the last writer's share).
INSERT INTO devices (
    id, kind, capabilities, slots, last_seen_at, version, logins, per_account_slots
) VALUES (
    :id, :kind, :capabilities, :slots, :last_seen_at, :version, :logins, :per_account_slots
) ON CONFLICT (id) DO UPDATE SET
    kind = excluded.kind, capabilities = excluded.capabilities, slots = excluded.slots,
    last_seen_at = GREATEST(devices.last_seen_at, excluded.last_seen_at),
    version = excluded.version, per_account_slots = excluded.per_account_slots,
    logins = (
        SELECT COALESCE(json_agg(badge ORDER BY badge->>'platform', badge->>'account'), '[]')::text
        FROM (
            SELECT DISTINCT ON (badge->>'platform', badge->>'account') badge
            FROM (
                SELECT badge, 0 AS written FROM json_array_elements(devices.logins::json) AS badge
                UNION ALL
                SELECT badge, 1 FROM json_array_elements(excluded.logins::json) AS badge
            ) AS both_rows
            ORDER BY badge->>'platform', badge->>'account',
                (badge->>'checked_at')::float8 DESC, written DESC
        ) AS newest
    );

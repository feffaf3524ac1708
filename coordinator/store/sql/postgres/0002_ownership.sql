-- Version 2 (PostgreSQL only): ownership for several coordinators on one database.
-- Jobs are partitioned by (platform, account) into a fixed number of shards
-- (coordinator/store/shards.py: shard_of); each shard has one row here. A coordinator owns a
-- shard while its lease holds; every take-over adds 1 to the epoch, and a write under a shard's
-- fence names the epoch it holds, so an owner that lost the shard cannot write any more. A shard
-- nobody holds has owner '' and expires_at 0. Rows are never deleted: an epoch never repeats.

CREATE TABLE shard_owners (
    shard        INTEGER NOT NULL PRIMARY KEY,
    owner        TEXT NOT NULL,
    epoch        BIGINT NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL
);

-- Singleton duties (sweeps, timers not tied to a shard): one leader per duty, elected by a row
-- with a TTL, as River does, not by advisory locks (those break behind PgBouncer's transaction
-- pooling). Resigning expires the row; it stays, so the epoch keeps counting.
CREATE TABLE leaders (
    duty       TEXT NOT NULL PRIMARY KEY,
    owner      TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    elected_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

-- The coordinators alive, each renewing its row: what a fair share of the shards is counted by
-- (a coordinator that just joined holds no shard yet, but counts).
CREATE TABLE coordinators (
    owner        TEXT NOT NULL PRIMARY KEY,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL
);

-- postroom schema, version 2: who may talk to the coordinator. Only SHA-256 hashes of secrets
-- are stored (coordinator/access/records.py); revoked rows stay, so the audit trail and
-- "this token was revoked" answers keep working.

CREATE TABLE operator_tokens (
    id          TEXT NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,              -- viewer | author | approver | admin
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  REAL
);

CREATE TABLE device_enrollments (
    name        TEXT NOT NULL PRIMARY KEY,  -- the device id its worker must use
    accounts    TEXT NOT NULL,              -- JSON [{"platform": ..., "account": ...}, ...]
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  REAL
);

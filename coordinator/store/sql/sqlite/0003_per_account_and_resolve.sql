-- Version 3: a device's per-account bound (Hello.per_account_slots) for the device list, and
-- who recorded a job as published by hand (ResolveJob).

ALTER TABLE devices ADD COLUMN per_account_slots INTEGER NOT NULL DEFAULT 0;

ALTER TABLE jobs ADD COLUMN resolved_by TEXT NOT NULL DEFAULT '';

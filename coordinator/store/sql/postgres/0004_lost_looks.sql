-- Version 4: the attempts of a job in doubt whose lease ended before they looked on the platform
-- (no result, no permit of their own). They do not count against max_attempts: the job looks
-- again after a backoff rather than ending FAILED while its post may exist.
ALTER TABLE jobs ADD COLUMN lost_looks INTEGER NOT NULL DEFAULT 0;

-- Version 3 (PostgreSQL only): where each live coordinator can be reached.
-- With several coordinators on one database one is active (it holds every shard) and the others
-- stand by; a standby refuses workers' streams naming the active's address, which it reads here
-- (the address the active advertises: --advertise, by default its bound gRPC address).
ALTER TABLE coordinators ADD COLUMN address TEXT NOT NULL DEFAULT '';

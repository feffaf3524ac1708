"""Several coordinators on one PostgreSQL: ownership turns, the active/standby role, fencing."""

"""`postroom demo --db postgresql://...`: two coordinators keep their state in one PostgreSQL
database (of this test's own), an active one and a standby; the demo says so, calls the standby
(which forwards to the active one), and publishes every post once."""

from __future__ import annotations

import subprocess
import sys

import asyncpg  # type: ignore[import-untyped]
from pg_rig import own_database, run_apart


async def _jobs_by_status(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    finally:
        await conn.close()
    return {row["status"]: int(row["n"]) for row in rows}


def test_the_demo_runs_on_postgresql() -> None:
    with own_database() as url:
        argv = [sys.executable, "-m", "postroom_cli", "demo", "--db", url, "--retry-after", "0.5"]
        demo = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        out = " ".join(demo.stdout.split())  # rich wraps long lines
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert f"db {url}" in out
        assert "two coordinators on PostgreSQL" in out
        assert "coord-1" in out and "coord-2" in out
        assert out.count(" active") >= 1 and "standby (takes over if the active one dies)" in out
        assert "this demo calls the standby" in out
        assert "the sandbox accepted 8 posts; duplicates: 0" in out
        assert run_apart(_jobs_by_status(url)) == {"SUCCEEDED": 8}

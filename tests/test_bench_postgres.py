"""`make bench` items 9 and 12 (bench/postgres.py, bench/coordinators.py) without a PostgreSQL
server: one line says why and what to do, and nothing is measured (the other items still run).
And what item 12f/12g (bench/coordinators_kill.py) report: which coordinator they kill, how the
jobs leased then ended."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench import coordinators, coordinators_kill, postgres
from bench.common import Context
from coordinator.store.shards import DEFAULT_SHARD_COUNT, shard_of


def test_item_9_skips_with_a_clear_line_when_no_server_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres@127.0.0.1:{s.getsockname()[1]}/postgres"
    monkeypatch.setenv(postgres.ENV_ADMIN_URL, url)
    assert postgres.run(Context(runs=1, quick=True, workroot=tmp_path)) == []
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"item 9 skipped: no PostgreSQL at {url} (")
    assert "POSTROOM_BENCH_PG" in line


def test_item_12_skips_with_a_clear_line_when_no_server_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres@127.0.0.1:{s.getsockname()[1]}/postgres"
    monkeypatch.setenv(postgres.ENV_ADMIN_URL, url)
    assert coordinators.run(Context(runs=1, quick=True, workroot=tmp_path)) == []
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"item 12 skipped: no PostgreSQL at {url} (")
    assert "POSTROOM_BENCH_PG" in line


def test_item_12f_kills_a_coordinator_holding_accounts_but_not_shard_0() -> None:
    accounts = [f"kill-{k}" for k in range(32)]
    shard = {a: shard_of("sandbox", a, DEFAULT_SHARD_COUNT) for a in accounts}
    # coord-1 holds shard 0 and most accounts; coord-2 holds none of them; coord-3 holds two.
    owners = {s: "coord-1" for s in range(DEFAULT_SHARD_COUNT)}
    owners.update({shard["kill-0"]: "coord-3", shard["kill-1"]: "coord-3", 0: "coord-1"})
    spare = next(s for s in range(1, DEFAULT_SHARD_COUNT) if s not in shard.values())
    owners[spare] = "coord-2"
    assert coordinators_kill.victim_of(owners, accounts) == "coord-3"
    only_shard_0 = dict.fromkeys(range(DEFAULT_SHARD_COUNT), "coord-1")
    with pytest.raises(RuntimeError, match="only shard 0's owner"):
        coordinators_kill.victim_of(only_shard_0, accounts)


def test_item_12f_names_how_each_job_leased_at_the_kill_ended() -> None:
    at_kill = {"a": 1, "b": 1, "c": 2, "d": 1}
    final = {
        "a": ("SUCCEEDED", 1),
        "b": ("SUCCEEDED", 2),
        "c": ("SUCCEEDED", 3),
        "d": ("FAILED", 1),
    }
    assert coordinators_kill.endings(at_kill, final) == {"FAILED": 1, "rerun": 2, "resumed": 1}

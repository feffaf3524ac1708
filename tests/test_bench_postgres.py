"""`make bench` items 9 and 12 (bench/postgres.py, bench/coordinators.py) without a PostgreSQL
server: one line says why and what to do, and nothing is measured (the other items still run)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench import coordinators, postgres
from bench.common import Context


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

"""`make bench` item 9 (bench/postgres.py) without a PostgreSQL server: one line says why and
what to do, and nothing is measured (the other items still run)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench import postgres
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

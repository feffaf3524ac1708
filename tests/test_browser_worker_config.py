"""`postroom worker` and browser accounts, before any browser starts: a browser worker says one
job at a time per account in its Hello; a browser account on an API worker, or a playbook with a
mistake, stops the worker at start (exit 2) with what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_pages import PLAYBOOK

from worker import session
from worker.main import build_parser, config_from_args, main

ARGS = ["--coordinator", "127.0.0.1:1", "--device-id", "d1"]


def accounts(tmp_path: Path, playbook: str = PLAYBOOK) -> Path:
    (tmp_path / "pb.toml").write_text(playbook.replace('platform = "unit"', 'platform = "x"'))
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[[account]]\nplatform = "x"\naccount = "alice"\nbase_url = "http://127.0.0.1:9"\n'
        'playbook = "pb.toml"\n'
    )
    return path


def test_a_browser_worker_hello_says_one_job_per_account() -> None:
    for kind, slots in (("browser", 1), ("api", 0)):
        args = build_parser().parse_args([*ARGS, "--kind", kind, "--platform", "sandbox", "--noop"])
        hello = session.hello(config_from_args(args), []).hello
        assert hello.per_account_slots == slots


def test_a_browser_account_needs_a_browser_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*ARGS, "--kind", "api", "--accounts", str(accounts(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "account x:alice names a playbook" in err and "--kind browser" in err


def test_a_playbook_mistake_stops_the_worker_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = accounts(tmp_path, PLAYBOOK.replace("item_selector", "item_selectr"))
    assert main([*ARGS, "--kind", "browser", "--accounts", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'pb.toml'}" in err and "unknown key 'item_selectr'" in err


def test_a_browser_that_cannot_start_stops_the_worker_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    path = accounts(tmp_path)
    argv = [*ARGS, "--kind", "browser", "--accounts", str(path), "--headed"]
    assert main([*argv, "--profiles-dir", str(tmp_path / "profiles")]) == 2
    err = capsys.readouterr().err
    assert "cannot start Chromium (/usr/bin/chromium)" in err and "--headed needs a display" in err

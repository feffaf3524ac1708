"""The worker's device token: from POSTROOM_DEVICE_TOKEN or --token-file, never a flag value,
and never repeated in what the worker prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.main import build_parser, device_token, main

SECRET = "prd_canary-device-token-0123456789"
BASE = ["--coordinator", "127.0.0.1:1", "--device-id", "w1", "--platform", "sandbox", "--noop"]


def test_the_token_comes_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    parser = build_parser()
    monkeypatch.delenv("POSTROOM_DEVICE_TOKEN", raising=False)
    assert device_token(parser.parse_args(BASE)) == ""
    monkeypatch.setenv("POSTROOM_DEVICE_TOKEN", SECRET)
    assert device_token(parser.parse_args(BASE)) == SECRET
    token_file = tmp_path / "w1.token"
    token_file.write_text(f"{SECRET}-file\n")
    assert device_token(parser.parse_args([*BASE, "--token-file", str(token_file)])) == (
        f"{SECRET}-file"
    )
    token_file.write_text("")
    with pytest.raises(ValueError, match="one line"):
        device_token(parser.parse_args([*BASE, "--token-file", str(token_file)]))


def test_a_token_on_the_command_line_is_refused_without_repeating_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*BASE, "--token", SECRET]) == 2
    err = capsys.readouterr().err
    assert "POSTROOM_DEVICE_TOKEN" in err and "--token-file" in err
    assert SECRET not in err

"""`postroom browser-login` as a process: a person (here a Playwright script connected over the
DevTools port, as over an SSH tunnel) logs in on the opened page; the command sees the
logged-in probe pass, saves the profile (0600) and exits 0; the engine's login check then says
logged in. Nobody logging in: exit 3. An account without a playbook: exit 2 saying so."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from asgi_thread import serve_in_thread
from browser_pages import COOKIE, PLAYBOOK, Site
from playwright.sync_api import sync_playwright
from polling import wait_until

from worker.browser.adapter import BrowserAdapter
from worker.browser.host import STATE_FILE, BrowserAccount, BrowserHost
from worker.browser.playbook import parse_playbook

DEADLINE_S = 60.0


@pytest.fixture
def site_url() -> Iterator[str]:
    with serve_in_thread(Site().app()) as url:
        yield url


def accounts_file(tmp_path: Path, url: str) -> Path:
    (tmp_path / "unit.toml").write_text(PLAYBOOK)
    path = tmp_path / "accounts.toml"
    path.write_text(
        f'[[account]]\nplatform = "unit"\naccount = "alice"\nbase_url = "{url}"\n'
        'playbook = "unit.toml"\n\n'
        '[[account]]\nplatform = "mastodon"\naccount = "api"\nbase_url = "https://m.example"\n'
        '[account.credentials]\naccess_token = "env:UNSET_IN_THIS_SHELL"\n'
    )
    return path


def browser_login(tmp_path: Path, accounts: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "postroom_cli", "browser-login", "--accounts", str(accounts)),
            *("--profiles-dir", str(tmp_path / "profiles"), "--headless", *args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_person_logs_in_over_the_debugging_port(site_url: str, tmp_path: Path) -> None:
    accounts = accounts_file(tmp_path, site_url)
    port = free_port()
    proc = browser_login(
        tmp_path, accounts, "--platform", "unit", "--account", "alice",
        "--remote-debugging-port", str(port), "--timeout-s", "60",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"remote debugging on http://127.0.0.1:{port}", line
        with sync_playwright() as p:
            browser = p.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
            page = wait_until(
                "the login page to show over CDP",
                lambda: next(
                    (pg for c in browser.contexts for pg in c.pages if pg.url.endswith("/login")),
                    None,
                ),
            )
            page.fill("input[name=user]", "alice")
            page.click("#sign-in")
            out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "logged in: unit:alice" in out
    state = tmp_path / "profiles" / "unit" / "alice" / STATE_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o600 and COOKIE in state.read_text()
    assert anyio.run(_login_check, site_url, tmp_path / "profiles") is True


async def _login_check(url: str, profiles: Path) -> bool:
    account = BrowserAccount(
        platform="unit",
        account="alice",
        base_url=url,
        playbook=parse_playbook(PLAYBOOK, source="unit.toml"),
    )
    host = BrowserHost([account], profiles_dir=profiles)
    try:
        return await BrowserAdapter(host, "unit").check_login("alice")
    finally:
        await host.aclose()


def test_nobody_logs_in_exit_3_and_a_non_browser_account_exit_2(
    site_url: str, tmp_path: Path
) -> None:
    accounts = accounts_file(tmp_path, site_url)
    proc = browser_login(
        tmp_path, accounts, "--platform", "unit", "--account", "alice", "--timeout-s", "2"
    )
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 3, err
    assert "unit:alice not logged in after 2s" in err
    assert not (tmp_path / "profiles" / "unit" / "alice" / STATE_FILE).exists()
    proc = browser_login(tmp_path, accounts, "--platform", "mastodon", "--account", "api")
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 2
    assert "has no playbook: it is not a browser account" in err

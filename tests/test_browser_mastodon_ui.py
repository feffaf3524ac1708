"""The web UI mastodon-mock (PyPI) serves at /_ui/, driven by headless Chromium: the token login,
the composer and the request its Post button makes, and the home timeline a verify reads. The
`mastodon-mock-ui` playbook relies on exactly this behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from local_servers import require_mastodon_mock
from playwright.sync_api import Browser, Page, expect, sync_playwright

from sandbox.local.mastodon import MastodonMock

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPECT_TIMEOUT_MS = 15_000  # generous: other test runs share the two cores
USERS = {"smoke_user": "tok-smoke"}


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonMock]:
    require_mastodon_mock()
    with MastodonMock(tmp_path_factory.mktemp("mastodon-ui"), USERS) as m:
        yield m


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as running:
        browser = running.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _new_page(browser: Browser) -> Page:
    context = browser.new_context()
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    return context.new_page()


def test_login_then_post_through_the_ui(browser: Browser, mock: MastodonMock) -> None:
    page = _new_page(browser)
    page.goto(f"{mock.url}/_ui/home")
    page.wait_for_url("**/_ui/login")  # the app sends a visitor without a token to its login
    page.fill("app-login input[placeholder='access token']", "tok-smoke")
    page.click("app-login button.btn:has-text('Sign in')")
    expect(page.locator("summary.account-pill")).to_contain_text("smoke_user")

    text = "Hello from the mastodon-mock UI\nsecond line"
    page.fill("app-compose textarea", text)
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/api/v1/statuses")
    ) as answer:
        page.click("app-compose .compose-actions > button.btn")
    created = answer.value.json()
    (status,) = mock.statuses("tok-smoke")
    assert created["id"] == status["id"] and created["url"] == status["url"]
    assert mock.source_text("tok-smoke", status["id"]) == text

    # The verify page: the home timeline lists the account's own statuses with their links.
    page.goto(f"{mock.url}/_ui/home")
    item = page.locator("app-status-card article.status").first
    assert item.locator(".content").inner_text().split() == text.split()
    link = item.locator("a.content-link").get_attribute("href")
    assert link == f"/_ui/statuses/{status['id']}"
    page.context.close()

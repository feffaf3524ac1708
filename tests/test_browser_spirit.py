"""django-spirit (PyPI; a real server-rendered forum nobody here wrote) driven by headless Chromium:
its login, its topic form with CSRF, its redirect to the new topic, its rate limiter, and the
profile page a verify reads. The `spirit` playbook relies on exactly this behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_servers import require_spirit
from playwright.sync_api import Browser, Page, Playwright, Response, expect, sync_playwright

from sandbox.local.spirit import SpiritForum, spirit_template

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
USERS = {"smoke": "smoke-pw-1", "login": "login-pw-1"}


@pytest.fixture(scope="module")
def forum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpiritForum]:
    require_spirit()
    template = spirit_template(tmp_path_factory.getbasetemp() / "spirit-cache")
    with SpiritForum(tmp_path_factory.mktemp("spirit"), USERS, template=template) as f:
        yield f


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as running:
        browser = _launch(running)
        yield browser
        browser.close()


def _launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def _page_as(browser: Browser, forum: SpiritForum, username: str | None) -> Page:
    context = browser.new_context()
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    if username is not None:
        cookie = {"name": "sessionid", "value": forum.session_cookie(username), "url": forum.url}
        context.add_cookies([cookie])  # type: ignore[list-item]
    return context.new_page()


def _publish(page: Page, forum: SpiritForum, title: str, text: str) -> Response:
    page.goto(f"{forum.url}/topic/publish/")
    page.fill("#id_title", title)
    page.select_option("#id_category", "Uncategorized")
    page.fill("#id_comment", text)
    with page.expect_response(
        lambda r: r.request.method == "POST" and "/topic/publish/" in r.url
    ) as answer:
        page.click("input.comment__reply__actions__publish")
    page.wait_for_load_state()
    return answer.value


def test_login_through_the_form(browser: Browser, forum: SpiritForum) -> None:
    page = _page_as(browser, forum, None)
    page.goto(f"{forum.url}/topic/publish/")
    assert "/user/login/" in page.url, "the topic form is behind the login wall"
    page.fill("#id_username", "login")
    page.fill("#id_password", USERS["login"])
    page.click("input[type=submit][value=Login]")
    expect(page.locator(".header__tabs a[href='/user/menu/']")).to_have_text(re.compile("login"))
    assert any(c["name"] == "sessionid" for c in page.context.cookies())
    page.context.close()


def test_publish_redirects_to_the_topic_then_the_limiter_refuses(
    browser: Browser, forum: SpiritForum
) -> None:
    page = _page_as(browser, forum, "smoke")
    text = "Hello Spirit from postroom\nsecond line"
    answer = _publish(page, forum, text, text)

    assert answer.status == 302
    (topic,) = forum.topics("smoke")
    assert (
        answer.headers["location"] == f"/topic/{topic.id}/hello-spirit-from-postroom-second-line/"
    )
    assert topic.title == "Hello Spirit from postroom second line", "line breaks become spaces"
    assert topic.comment.replace("\r\n", "\n") == text
    share = page.locator(".comments_list__comment[data-number='1'] .comment__footer__share__url")
    assert re.search(r"/comment/[0-9]+/find/$", share.get_attribute("value") or "")

    # The logged-in visitor of the login page lands on their profile: the verify page.
    page.goto(f"{forum.url}/user/login/")
    item = page.locator(".comments_list__comment").first
    assert item.locator(".comment__text").inner_text().split() == text.split()

    refused = _publish(page, forum, "a second topic", "a second topic")
    assert refused.status == 200
    assert "Too many submissions" in refused.text()
    expect(page.locator(".messages_error .message_text")).to_contain_text("Too many submissions")
    assert len(forum.topics("smoke")) == 1
    page.context.close()

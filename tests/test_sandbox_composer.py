"""The sandbox's composer sites (/web/x, /web/instagram) driven by real headless Chromium: the
login wall and the login, a post through each composer recorded once, and every page and submit
fault as a browser meets it. The browser worker's playbooks rely on exactly this behaviour.
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from asgi_thread import serve_in_thread
from PIL import Image
from playwright.sync_api import (
    Browser,
    Locator,
    Page,
    Playwright,
    Response,
    expect,
    sync_playwright,
)
from polling import wait_until

from sandbox.admin import SandboxAdmin
from sandbox.app import create_app
from worker.browser.host import CHROMIUM, CHROMIUM_ARGS
from worker.browser.playbook import fill_template, json_path, load_playbook

# Generous: other test runs share the two cores.
EXPECT_TIMEOUT_MS = 15_000
_names = itertools.count(1)


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with serve_in_thread(create_app(), name="sandbox") as url:
        yield url


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def admin(sandbox_url: str) -> Iterator[SandboxAdmin]:
    with SandboxAdmin(sandbox_url) as client:
        yield client
        client.clear_faults()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture
def account() -> str:
    """A fresh account per test: sessions and posts of one test never meet another's."""
    return f"user{next(_names)}_{int(time.time() * 1000) % 100000}"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "sunset.png"
    image = Image.new("RGB", (64, 48), (230, 120, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def x_login(page: Page, base: str, account: str, then: str = "/compose/post") -> None:
    page.goto(f"{base}/web/x{then}")
    expect(page).to_have_url(
        f"{base}/web/x/i/flow/login?redirect_after_login=%2F{then[1:].replace('/', '%2F')}"
    )
    page.fill('input[autocomplete="username"]', account)
    page.fill('input[name="password"]', "any password")
    page.click('[data-testid="LoginForm_Login_Button"]')
    expect(page).to_have_url(f"{base}/web/x{then}")


def ig_login(page: Page, base: str, account: str) -> None:
    page.goto(f"{base}/web/instagram/create/")
    expect(page).to_have_url(f"{base}/web/instagram/accounts/login/?next=%2Fcreate%2F")
    page.fill('input[name="username"]', account)
    page.fill('input[name="password"]', "any password")
    page.click('button[type="submit"]')
    expect(page).to_have_url(f"{base}/web/instagram/create/")


def ig_open_share(page: Page) -> Locator:
    """The composer's Share: the "Share this post?" dialog it opens."""
    page.get_by_role("button", name="Share", exact=True).click()
    return page.get_by_role("dialog", name="Share this post?")


def ig_confirm(page: Page, dialog: Locator) -> Response:
    """The dialog's Share (the submit): the site's answer."""
    with page.expect_response("**/api/v1/media/configure/") as answer:
        dialog.get_by_role("button", name="Share", exact=True).click()
    return answer.value


def ig_share_refused(
    page: Page, admin: SandboxAdmin, account: str, status: int, alert: str
) -> object:
    """Share, refused with `status`: the page says `alert`, nothing is recorded; the JSON."""
    answer = ig_confirm(page, ig_open_share(page))
    assert answer.status == status
    expect(page.get_by_role("alert")).to_have_text(alert)
    assert admin.posts(platform="instagram", account=account) == []
    return answer.json()


def x_post(page: Page, text: str) -> None:
    page.fill('[data-testid="tweetTextarea_0"]', text)
    page.click('[data-testid="tweetButton"]')


# Login wall and login ------------------------------------------------------------------------


def test_x_login_wall_then_login_opens_the_composer(
    page: Page, sandbox_url: str, account: str
) -> None:
    x_login(page, sandbox_url, account)
    expect(page.get_by_test_id("SideNav_AccountSwitcher_Button")).to_have_text(f"@{account}")
    expect(page.get_by_test_id("tweetButton")).to_be_disabled()  # nothing typed yet


def test_x_login_refuses_an_empty_password(page: Page, sandbox_url: str) -> None:
    page.goto(f"{sandbox_url}/web/x/i/flow/login")
    page.fill('input[autocomplete="username"]', "someone")
    page.click('[data-testid="LoginForm_Login_Button"]')
    expect(page.get_by_role("alert")).to_have_text("Enter your username and password.")


def test_a_submit_without_a_session_is_401_in_x_shape(sandbox_url: str) -> None:
    response = httpx.post(f"{sandbox_url}/web/x/i/api/graphql/CreateTweet", data={"text": "hi"})
    assert response.status_code == 401
    assert response.json() == {"errors": [{"code": 32, "message": "You are not logged in."}]}


# Posting -------------------------------------------------------------------------------------


def test_x_post_is_recorded_once_and_listed_on_the_profile(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str, photo: Path
) -> None:
    x_login(page, sandbox_url, account)
    text = "Sunset over the harbour\nsecond line"
    page.set_input_files('[data-testid="fileInput"]', photo)
    with page.expect_response("**/CreateTweet") as answer:
        x_post(page, text)
    post_id = answer.value.json()["data"]["create_tweet"]["tweet_results"]["result"]["rest_id"]
    expect(page.get_by_test_id("toast")).to_contain_text("Your post was sent.")

    [recorded] = admin.posts(platform="x", account=account)
    assert recorded["id"] == post_id and recorded["text"] == text
    assert recorded["url"] == f"{sandbox_url}/web/x/{account}/status/{post_id}"
    assert recorded["media"][0].startswith("sunset.png#sha256:")

    page.goto(f"{sandbox_url}/web/x/{account}")
    tweet = page.get_by_test_id("tweet")
    expect(tweet).to_have_count(1)
    expect(tweet.get_by_test_id("tweetText")).to_have_text(text)
    link = tweet.locator('a[href*="/status/"]')
    expect(link).to_have_attribute("href", f"/web/x/{account}/status/{post_id}")
    link.click()
    expect(page).to_have_url(recorded["url"])
    expect(page.get_by_test_id("tweetText")).to_have_text(text)


def test_instagram_share_asks_then_records_one_post_with_its_photo(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str, photo: Path
) -> None:
    ig_login(page, sandbox_url, account)
    caption = "Harbour at dusk #sandbox"
    page.set_input_files('input[type="file"]', photo)
    page.fill('textarea[aria-label="Write a caption..."]', caption)
    dialog = ig_open_share(page)
    expect(dialog).to_be_visible()
    assert admin.posts(platform="instagram", account=account) == []  # the dialog only asks
    code = ig_confirm(page, dialog).json()["media"]["code"]
    expect(page.get_by_role("dialog", name="Post shared")).to_contain_text(
        "Your post has been shared."
    )

    [recorded] = admin.posts(platform="instagram", account=account)
    assert (recorded["id"], recorded["text"]) == (code, caption)
    assert recorded["url"] == f"{sandbox_url}/web/instagram/p/{code}/"
    page.goto(f"{sandbox_url}/web/instagram/{account}/")
    tile = page.locator(f'a[href="/web/instagram/p/{code}/"]')
    expect(tile.locator(".caption")).to_have_text(caption)
    assert tile.locator("img").evaluate("img => img.naturalWidth") == 64  # the photo came back


def test_instagram_refuses_a_post_without_a_photo(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    ig_login(page, sandbox_url, account)
    page.fill('textarea[aria-label="Write a caption..."]', "words only")
    body = ig_share_refused(page, admin, account, 400, "Add a photo or video to share.")
    assert isinstance(body, dict) and body["error_type"] == "invalid_content"


# Faults --------------------------------------------------------------------------------------


def test_logged_out_sends_every_page_to_the_login_wall(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    x_login(page, sandbox_url, account)
    admin.set_logged_in("x", account, False)
    page.goto(f"{sandbox_url}/web/x/home")
    expect(page).to_have_url(f"{sandbox_url}/web/x/i/flow/login?redirect_after_login=%2Fhome")
    # The old cookie stays dead after the account logs in again elsewhere.
    stale = page.context.cookies()
    admin.set_logged_in("x", account, True)
    page.goto(f"{sandbox_url}/web/x/home")
    assert "/i/flow/login" in page.url
    assert any(cookie["name"] == "auth_token" for cookie in stale)


def test_renamed_selector_renames_the_post_button_for_count_loads(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    x_login(page, sandbox_url, account, then="/home")
    admin.inject("renamed_selector", platform="x", account=account, count=1)
    page.goto(f"{sandbox_url}/web/x/{account}")  # other pages leave the fault for the composer
    assert [f["kind"] for f in admin.faults()] == ["renamed_selector"]
    page.goto(f"{sandbox_url}/web/x/compose/post")
    expect(page.get_by_test_id("tweetButtonInline")).to_have_count(1)
    expect(page.get_by_test_id("tweetButton")).to_have_count(0)
    page.reload()
    expect(page.get_by_test_id("tweetButton")).to_have_count(1)


def test_renamed_selector_renames_the_instagram_caption_box(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    ig_login(page, sandbox_url, account)
    admin.inject("renamed_selector", platform="instagram", account=account)
    page.reload()
    expect(page.locator('textarea[aria-label="Write a caption..."]')).to_have_count(0)
    expect(page.locator('textarea[aria-label="Write a caption\u2026"]')).to_have_count(1)


def test_slow_page_is_served_late(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    x_login(page, sandbox_url, account, then="/home")
    admin.inject("slow_page", platform="x", account=account, hang_seconds=1.5)
    started = time.monotonic()
    page.goto(f"{sandbox_url}/web/x/compose/post")
    assert time.monotonic() - started >= 1.4
    expect(page.get_by_test_id("tweetTextarea_0")).to_be_visible()


def test_challenge_redirects_to_a_code_page_that_never_lets_in(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    x_login(page, sandbox_url, account, then="/home")
    admin.inject("challenge", platform="x", account=account)
    page.goto(f"{sandbox_url}/web/x/compose/post")
    expect(page).to_have_url(f"{sandbox_url}/web/x/account/login_challenge")
    expect(page.get_by_role("heading")).to_have_text("Verify your identity")
    page.fill("#code", "123456")
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("alert")).to_have_text("That code was incorrect. Try again.")


def test_submit_fails_with_a_rate_limit_and_posts_nothing(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    x_login(page, sandbox_url, account)
    admin.inject("rate_limit", platform="x", account=account, retry_after_seconds=60)
    with page.expect_response("**/CreateTweet") as answer:
        x_post(page, "too soon")
    assert answer.value.status == 429
    assert answer.value.headers["retry-after"] == "60"
    assert answer.value.json()["errors"][0]["code"] == 88
    expect(page.get_by_test_id("toast")).to_contain_text("Rate limit exceeded")
    assert admin.posts(platform="x", account=account) == []
    # The button is usable again, and the next submit goes through.
    with page.expect_response("**/CreateTweet") as answer:
        page.click('[data-testid="tweetButton"]')
    assert answer.value.status == 200
    assert len(admin.posts(platform="x", account=account)) == 1


def test_submit_fails_with_a_server_error(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str, photo: Path
) -> None:
    ig_login(page, sandbox_url, account)
    admin.inject("server_error", platform="instagram", account=account, status=503)
    page.set_input_files('input[type="file"]', photo)
    assert ig_share_refused(page, admin, account, 503, "internal server error") == {
        "message": "internal server error",
        "status": "fail",
        "error_type": "server_error",
    }


def test_auth_fault_on_submit_logs_the_account_out(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    x_login(page, sandbox_url, account)
    admin.inject("auth", platform="x", account=account)
    with page.expect_response("**/CreateTweet") as answer:
        x_post(page, "session gone")
    assert answer.value.status == 401
    page.goto(f"{sandbox_url}/web/x/home")
    assert "/i/flow/login" in page.url


def test_submit_hangs_records_the_post_and_never_answers(
    page: Page, sandbox_url: str, admin: SandboxAdmin, account: str
) -> None:
    x_login(page, sandbox_url, account)
    admin.inject("accept_then_hang", platform="x", account=account, hang_seconds=120)
    x_post(page, "did it go?")
    wait_until("the hanging post to be recorded", lambda: admin.posts("x", account))
    assert admin.stats()["hanging"] >= 1
    expect(page.get_by_test_id("toast")).to_be_hidden()  # no answer, so nothing to say
    page.close()  # the client gives up: the sandbox stops waiting too
    wait_until("the hang to end", lambda: admin.stats()["hanging"] == 0)
    assert len(admin.posts("x", account)) == 1


def test_page_faults_are_refused_with_an_api_op(admin: SandboxAdmin) -> None:
    with pytest.raises(Exception, match="cannot take op 'create'"):
        admin.inject("slow_page", platform="x", op="create")


# The bundled playbooks against the pages (walked here by hand; the engine's e2e tests run them)


@pytest.mark.parametrize("platform", ["x", "instagram"])
def test_the_bundled_playbook_fits_its_site(
    browser: Browser,
    page: Page,
    sandbox_url: str,
    admin: SandboxAdmin,
    account: str,
    photo: Path,
    platform: str,
) -> None:
    book = load_playbook(f"sandbox-{platform}")
    base = f"{sandbox_url}/web/{platform}"
    values = {"base_url": base, "account": account, "text": "Playbook walk\n  with   spaces"}
    login = book.login
    wall = browser.new_page()  # a context of its own, never logged in
    wall.goto(fill_template(login.check_url, values))
    assert any(part in wall.url for part in login.login_wall.url_contains)
    expect(wall.locator(str(login.login_wall.selector))).to_be_visible()
    wall.context.close()

    (x_login if platform == "x" else ig_login)(page, sandbox_url, account)
    page.goto(fill_template(login.check_url, values))
    expect(page.locator(str(login.logged_in.selector))).to_be_visible()
    assert login.logged_in.cookie in {cookie["name"] for cookie in page.context.cookies()}

    for step in book.compose:
        target = page.locator(step.selector or "body")
        match step.action:
            case "goto":
                page.goto(fill_template(str(step.url), values))
            case "upload":
                target.set_input_files(photo)
            case "fill":
                target.fill(fill_template(str(step.value), values))
            case "click":
                target.click()
            case "wait_for":
                target.wait_for()
    commit = book.commit

    def is_submit(response: Response) -> bool:
        matched = commit.response.url.search(response.url) is not None
        return matched and response.request.method == commit.response.method

    with page.expect_response(is_submit) as answer:
        page.locator(str(commit.step.selector)).click()
    data = answer.value.json()
    assert json_path(data, str(commit.outcomes[0].json_has)) is not None
    post_id = str(json_path(data, str(book.permalink.id_json)))
    assert commit.success is not None
    expect(page.locator(str(commit.success.selector))).to_contain_text(str(commit.success.text))
    [recorded] = admin.posts(platform=platform, account=account)
    url = fill_template(str(book.permalink.url_template), {**values, "post_id": post_id})
    assert (recorded["id"], recorded["url"]) == (post_id, url)

    assert book.verify is not None
    page.goto(fill_template(book.verify.url, values))
    expect(page.locator(str(book.verify.ready_selector))).to_be_visible()
    item = page.locator(book.verify.item_selector)
    expect(item).to_have_count(1)
    shown = item.locator(str(book.verify.text_selector)).inner_text()
    assert " ".join(shown.split()) == "Playbook walk with spaces"
    href = item.locator(str(book.verify.link_selector)).get_attribute("href")
    assert href is not None and sandbox_url + href == url

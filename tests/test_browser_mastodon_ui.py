"""A browser worker publishing through the web UI that mastodon-mock (PyPI) serves at /_ui/ (an
Angular app over the Mastodon API) with the `mastodon-mock-ui` playbook: headless Chromium, the
coordinator and the worker as processes.

One mastodon-mock and one coordinator + browser worker for the module; every test has its own
postroom account and Mastodon user. The posts are all published when the module starts and
their jobs run side by side, each test waiting for its own. What a user would see is read where
they would see it: the job (status, error, result, screenshots) and the statuses on the
Mastodon server itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from browser_apps import (
    DEVICE,
    MARK,
    BrowserAppRig,
    bundled_playbook,
    red_pixels,
    renamed_playbook,
    require_chromium,
    steps,
)
from local_servers import require_mastodon_mock
from platform_rig import Account
from playwright.sync_api import Page, Playwright, sync_playwright

from postroom.v1 import types_pb2 as pb
from sandbox.local.mastodon import MastodonMock

PLATFORM = "mastodon"
# postroom account -> (Mastodon username, its token, the post published when the module starts).
# "fresh" starts logged out; "confirm" asks for a confirmation.
USERS = {
    "pub": (
        "pub_user",
        "tok-pub",
        f"Hello from the mastodon-mock UI {MARK}\nsecond line #postroom",
    ),
    "confirm": ("confirm_user", "tok-confirm", f"Check me before it goes out {MARK}"),
    "renamed": ("renamed_user", "tok-renamed", f"The composer was redone {MARK}"),
    "fresh": ("fresh_user", "tok-fresh", f"Posted once somebody signed in {MARK}"),
}
TOKEN_KEY = "mastodon_mock_token"  # where the app keeps its login, in localStorage
COMPOSER = "app-compose textarea"
RENAMED_COMPOSER = "app-compose [contenteditable]"  # what a redesign might make of it
HEADER_PX = 60  # the app's top bar; the post's text is drawn below it


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonMock]:
    require_mastodon_mock()
    users = {username: tok for username, tok, _ in USERS.values()}
    with MastodonMock(tmp_path_factory.mktemp("mastodon-ui"), users) as m:
        yield m


@pytest.fixture(scope="module")
def earlier(mock: MastodonMock) -> dict[str, Any]:
    """A status `renamed` posted through the API before: its home timeline is not empty."""
    answer = httpx.post(
        f"{mock.url}/api/v1/statuses",
        data={"status": f"posted earlier {MARK}"},
        headers={"Authorization": f"Bearer {token('renamed')}"},
        timeout=10.0,
    )
    answer.raise_for_status()
    status: dict[str, Any] = answer.json()
    return status


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, mock: MastodonMock, earlier: dict[str, Any]
) -> Iterator[BrowserAppRig]:
    require_chromium()
    workdir = tmp_path_factory.mktemp("mastodon-ui-rig")
    renamed = renamed_playbook(
        bundled_playbook("mastodon-mock-ui"),
        workdir / "mastodon-ui-renamed.toml",
        COMPOSER,
        RENAMED_COMPOSER,
    )
    accounts = [
        Account(
            PLATFORM,
            name,
            mock.url,
            {},
            {"playbook": str(renamed) if name == "renamed" else "mastodon-mock-ui"},
        )
        for name in USERS
    ]
    with BrowserAppRig(workdir) as r:
        for name in USERS:
            if name != "fresh":  # signed in: the app's token in its localStorage
                r.save_local_storage(PLATFORM, name, mock.url, {TOKEN_KEY: token(name)})
        r.start_browser(accounts)
        yield r


@pytest.fixture(scope="module")
def posted(rig: BrowserAppRig) -> dict[str, str]:
    """account -> post id, all published at once."""
    return {
        name: rig.cluster.publish(rig.api, text, [target(name)], require_confirm=name == "confirm")
        for name, (_, _, text) in USERS.items()
    }


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


def target(account: str) -> str:
    return f"{PLATFORM}:{account}"


def token(account: str) -> str:
    return USERS[account][1]


def text(account: str) -> str:
    return USERS[account][2]


# ---- publishing -------------------------------------------------------------------------------


def test_publishes_through_the_ui(
    rig: BrowserAppRig, mock: MastodonMock, posted: dict[str, str]
) -> None:
    job = rig.wait_status(posted["pub"], pb.JOB_STATUS_SUCCEEDED)

    (status,) = mock.statuses(token("pub"))
    assert mock.source_text(token("pub"), status["id"]) == text("pub")
    assert job.result_post_id == status["id"]
    assert job.result_url == f"{mock.url}/_ui/statuses/{status['id']}"
    playbook_steps = ["open_home", "type_text", "find_post_button", "submit"]
    assert [s for s in steps(job)[-1] if s in playbook_steps] == playbook_steps
    # The home timeline with the new status on it.
    assert red_pixels(rig.screenshot(job, "after_publish"), below=HEADER_PX) > 200


def test_confirm_shows_the_composer_first(
    rig: BrowserAppRig, mock: MastodonMock, posted: dict[str, str]
) -> None:
    job = rig.wait_status(posted["confirm"], pb.JOB_STATUS_AWAITING_CONFIRM)

    assert red_pixels(rig.screenshot(job, "before_confirm"), below=HEADER_PX) > 200
    assert mock.statuses(token("confirm")) == [], "nothing is posted before the confirmation"

    rig.api.confirm_job(job.id)
    job = rig.wait_status(posted["confirm"], pb.JOB_STATUS_SUCCEEDED)
    (status,) = mock.statuses(token("confirm"))
    assert job.result_post_id == status["id"]
    assert mock.source_text(token("confirm"), status["id"]) == text("confirm")


# ---- what goes wrong -------------------------------------------------------------------------


def test_a_renamed_selector_is_ui_changed(
    rig: BrowserAppRig, mock: MastodonMock, posted: dict[str, str], earlier: dict[str, Any]
) -> None:
    job = rig.wait_status(posted["renamed"], pb.JOB_STATUS_FAILED)

    assert job.last_error_class == pb.ERROR_CLASS_UI_CHANGED, job.last_error
    # FAILED at once (a changed page is not retried), naming the step and the selector.
    assert job.runs[-1].failed_step.startswith("type_text"), rig.explain(job)
    assert "'type_text'" in job.last_error and RENAMED_COMPOSER in job.last_error
    # The page as it was: the home timeline with the earlier status on it.
    assert red_pixels(rig.screenshot(job, "on_failure"), below=HEADER_PX) > 200
    assert [s["id"] for s in mock.statuses(token("renamed"))] == [earlier["id"]]


def sign_in(page: Page, token: str) -> None:
    """What a person does on the app's login page: paste the token, press Sign in."""
    page.wait_for_url("**/_ui/login")
    page.fill("app-login input[placeholder='access token']", token)
    page.click("app-login button.btn:has-text('Sign in')")


def test_logged_out_needs_login_then_publishes_after_a_login(
    rig: BrowserAppRig, mock: MastodonMock, posted: dict[str, str], playwright: Playwright
) -> None:
    job = rig.wait_status(posted["fresh"], pb.JOB_STATUS_NEEDS_LOGIN)
    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED, job.last_error
    assert mock.statuses(token("fresh")) == []

    printed = rig.browser_login(
        playwright, PLATFORM, "fresh", lambda page: sign_in(page, token("fresh"))
    )
    assert f"logged in: {PLATFORM}:fresh" in printed

    checked = rig.api.check_login(device_id=DEVICE, platform=PLATFORM, account="fresh")
    assert checked.badge.state == pb.LOGIN_STATE_LOGGED_IN, checked.badge.message
    assert job.id in checked.requeued_job_ids
    job = rig.wait_status(posted["fresh"], pb.JOB_STATUS_SUCCEEDED)
    (status,) = mock.statuses(token("fresh"))
    assert job.result_post_id == status["id"]
    assert mock.source_text(token("fresh"), status["id"]) == text("fresh")

"""A browser worker publishing to django-spirit (PyPI; a real server-rendered forum nobody here
wrote) through the `spirit` playbook: a post becomes a topic, through Spirit's own login, CSRF
form and rate limiter, in headless Chromium, with the coordinator and the worker as processes.

One forum and one coordinator + browser worker for the module; every test has its own Spirit
user (= postroom account), so no two tests share a login, a rate-limit window or a topic list.
The posts are all published when the module starts and their jobs run side by side (one job
at a time per account), each test waiting for its own. What a user would see is read where
they would see it: the job (status, error, result, step logs, screenshots), the gate, and the
topics in the forum's own database.
"""

from __future__ import annotations

from collections.abc import Iterator

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
from local_servers import require_spirit
from platform_rig import Account
from playwright.sync_api import Page, Playwright, sync_playwright

from postroom.v1 import types_pb2 as pb
from sandbox.local.spirit import SpiritForum, spirit_template

PLATFORM = "spirit"
# postroom account = Spirit username -> the post published for it when the module starts.
# "fresh" starts with an empty profile (logged out); "confirm" asks for a confirmation.
TEXTS = {
    "pub": f"Hello Spirit from postroom {MARK}\nsecond line",
    "confirm": f"Check me before it goes out {MARK}",
    "renamed": f"The comment field was renamed {MARK}",
    "fresh": f"Posted once somebody logged in {MARK}",
    "limited": f"The first topic {MARK}",
    "doubt": f"Stored, but the answer was lost {MARK}",
}
PASSWORDS = {name: f"{name}-pw-7" for name in TEXTS}
COMMENT = "#id_comment"
RENAMED_COMMENT = "#id_body"  # what a redesign might call the comment field
HEADER_PX = 60  # Spirit's header row; the post's text is drawn below it
HOLD_S = 20.0  # the held answer outlasts the submit's bound (6.4 s) by far


@pytest.fixture(scope="module")
def forum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpiritForum]:
    require_spirit()
    with SpiritForum(tmp_path_factory.mktemp("spirit"), PASSWORDS, template=spirit_template()) as f:
        yield f


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, forum: SpiritForum) -> Iterator[BrowserAppRig]:
    require_chromium()
    workdir = tmp_path_factory.mktemp("spirit-rig")
    renamed = renamed_playbook(
        bundled_playbook("spirit"), workdir / "spirit-renamed.toml", COMMENT, RENAMED_COMMENT
    )
    accounts = [
        Account(
            PLATFORM,
            name,
            forum.url,
            {},
            {"playbook": str(renamed) if name == "renamed" else "spirit"},
        )
        for name in TEXTS
    ]
    with BrowserAppRig(workdir) as r:
        for name in TEXTS:
            if name != "fresh":
                # A session Spirit made for the user (not its login form: Spirit's login limiter
                # allows 5 per IP, kept for the one login a test does through the page).
                r.save_cookie(PLATFORM, name, forum.url, "sessionid", forum.session_cookie(name))
        r.start_browser(accounts)
        yield r


@pytest.fixture(scope="module")
def posted(rig: BrowserAppRig, forum: SpiritForum) -> dict[str, str]:
    """account -> post id, all published at once."""
    # The forum stores doubt's topic, then holds its answer past the submit's bound.
    forum.hold_answer(r"^/topic/publish/", HOLD_S, user="doubt")
    return {
        name: rig.cluster.publish(rig.api, text, [target(name)], require_confirm=name == "confirm")
        for name, text in TEXTS.items()
    }


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


def target(account: str) -> str:
    return f"{PLATFORM}:{account}"


# ---- publishing -------------------------------------------------------------------------------


def test_publishes_a_topic(rig: BrowserAppRig, forum: SpiritForum, posted: dict[str, str]) -> None:
    job = rig.wait_status(posted["pub"], pb.JOB_STATUS_SUCCEEDED)

    text = TEXTS["pub"]
    (topic,) = forum.topics("pub")
    assert topic.comment == text
    assert topic.title == text.replace("\n", " "), "the title is the text on one line"
    assert job.result_post_id == str(topic.comment_id)
    assert job.result_url == topic.permalink(forum.url)
    playbook_steps = [
        *("open_form", "fill_title", "choose_category", "fill_comment", "find_publish_button"),
        "submit",
    ]
    done = steps(job)[-1]
    assert [s for s in done if s in playbook_steps] == playbook_steps, rig.explain(job)
    shot = rig.screenshot(job, "after_publish")
    assert shot.width >= 1000
    # The topic page: its title and first comment both carry the red squares.
    assert red_pixels(shot, below=HEADER_PX) > 400


def test_confirm_shows_the_filled_form_first(
    rig: BrowserAppRig, forum: SpiritForum, posted: dict[str, str]
) -> None:
    job = rig.wait_status(posted["confirm"], pb.JOB_STATUS_AWAITING_CONFIRM)

    shot = rig.screenshot(job, "before_confirm")
    assert red_pixels(shot, below=HEADER_PX) > 400, "the form holds the text, title and comment"
    assert forum.topics("confirm") == [], "nothing is posted before the confirmation"

    rig.api.confirm_job(job.id)
    job = rig.wait_status(posted["confirm"], pb.JOB_STATUS_SUCCEEDED)
    (topic,) = forum.topics("confirm")
    assert topic.comment == TEXTS["confirm"]
    assert job.result_url == topic.permalink(forum.url)
    assert red_pixels(rig.screenshot(job, "after_publish"), below=HEADER_PX) > 400


# ---- what goes wrong -------------------------------------------------------------------------


def test_a_renamed_selector_is_ui_changed(
    rig: BrowserAppRig, forum: SpiritForum, posted: dict[str, str]
) -> None:
    job = rig.wait_status(posted["renamed"], pb.JOB_STATUS_FAILED)

    assert job.last_error_class == pb.ERROR_CLASS_UI_CHANGED, job.last_error
    # FAILED at once (a changed page is not retried), naming the step and the selector.
    assert job.runs[-1].failed_step.startswith("fill_comment"), rig.explain(job)
    assert "'fill_comment'" in job.last_error and RENAMED_COMMENT in job.last_error
    # The page as it was: the title typed in, no field by the name the playbook gives.
    assert red_pixels(rig.screenshot(job, "on_failure"), below=HEADER_PX) > 150
    assert forum.topics("renamed") == []


def test_logged_out_needs_login_then_publishes_after_a_login(
    rig: BrowserAppRig, forum: SpiritForum, posted: dict[str, str], playwright: Playwright
) -> None:
    job = rig.wait_status(posted["fresh"], pb.JOB_STATUS_NEEDS_LOGIN)
    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED, job.last_error
    assert forum.topics("fresh") == []

    def log_in(page: Page) -> None:  # what the person does on Spirit's own login page
        page.wait_for_url("**/user/login/**")
        page.fill("#id_username", "fresh")
        page.fill("#id_password", PASSWORDS["fresh"])
        page.click("input[type=submit][value=Login]")

    printed = rig.browser_login(playwright, PLATFORM, "fresh", log_in)
    assert f"logged in: {PLATFORM}:fresh" in printed

    checked = rig.api.check_login(device_id=DEVICE, platform=PLATFORM, account="fresh")
    assert checked.badge.state == pb.LOGIN_STATE_LOGGED_IN, checked.badge.message
    assert job.id in checked.requeued_job_ids
    job = rig.wait_status(posted["fresh"], pb.JOB_STATUS_SUCCEEDED)
    (topic,) = forum.topics("fresh")
    assert topic.comment == TEXTS["fresh"] and job.result_url == topic.permalink(forum.url)


def test_the_forums_rate_limiter_closes_the_gate(
    rig: BrowserAppRig, forum: SpiritForum, posted: dict[str, str]
) -> None:
    rig.wait_status(posted["limited"], pb.JOB_STATUS_SUCCEEDED)

    # Spirit allows one topic per 10 s window per user; this runner's window never rolls over.
    second = rig.publish(f"One topic too many {MARK}", [target("limited")])
    job = rig.wait_job(
        second,
        "the second job back in the queue, rate limited",
        lambda j: j.last_error_class == pb.ERROR_CLASS_RATE_LIMITED,
    )
    assert job.status == pb.JOB_STATUS_QUEUED, pb.JobStatus.Name(job.status)
    assert "Too many submissions" in job.last_error
    assert rig.closed_gate(PLATFORM, "limited") is not None, "the account's gate is closed"
    assert len(forum.topics("limited")) == 1


def test_a_lost_answer_is_verified_not_posted_again(
    rig: BrowserAppRig, forum: SpiritForum, posted: dict[str, str]
) -> None:
    job = rig.wait_status(posted["doubt"], pb.JOB_STATUS_SUCCEEDED)

    (topic,) = forum.topics("doubt")
    assert topic.comment == TEXTS["doubt"]
    first = job.runs[0]
    assert first.error_class == pb.ERROR_CLASS_TRANSIENT and "in doubt" in first.error
    done = steps(job)[-1]
    assert "verify" in done and "submit" not in done, rig.explain(job)
    assert job.result_post_id == str(topic.comment_id)
    assert rig.success_details(job).get("found_existing") is True

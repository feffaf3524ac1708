"""The web console end to end: sandbox, coordinator (tokens on), a worker and `postroom console`
as processes, read and driven through a real headless Chromium.

One module-scoped run has what an operator meets: a 429 (then a success after the gate
reopened), a NEEDS_LOGIN, plain successes, a post with a partial failure, two jobs of one
account failed for good, and two jobs waiting for a confirmation. Every page is opened on it
and screenshotted into tests/artifacts/console/ for a person to look at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from polling import wait_until

from postroom.v1 import access_pb2 as ac
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster
from postroom_console.actions import ACTIONS
from sandbox.admin import SandboxAdmin
from worker.browser.host import CHROMIUM, CHROMIUM_ARGS

ARTIFACTS = Path(__file__).parent / "artifacts" / "console"
WORKER = "console-w1"
EXPECT_TIMEOUT_MS = 15_000  # other test runs share the two cores
RETRY_AFTER_S = 1.0
LONG_RETRY_AFTER_S = 600.0


@dataclass(frozen=True)
class Run:
    cluster: LocalCluster
    url: str
    operator_token: str  # olga, an approver
    viewer_token: str
    ok_post: str
    partial_post: str  # sandbox:ok2 published, sandbox:expired NEEDS_LOGIN
    limited_job: str  # a 429, then published
    throttled_job: str  # a 429 with a long wait: its gate stays closed
    expired_job: str
    failed_jobs: tuple[str, str]  # of sandbox:bulk, failed for good
    confirm_jobs: tuple[str, str]  # AWAITING_CONFIRM


def _status(client: PublishingClient, job_id: str) -> int:
    return client.get_job(job_id).status


def _job_of(client: PublishingClient, post_id: str, account: str) -> str:
    post = client.get_post(post_id)
    return next(t.job_id for t in post.target_states if t.target.account == account)


def _wait_status(client: PublishingClient, job_id: str, status: int) -> None:
    name = pb.JobStatus.Name(status)  # type: ignore[arg-type]
    wait_until(f"job {job_id} {name}", lambda: _status(client, job_id) == status)


def _make_run(cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin) -> Run:
    admin.inject("rate_limit", account="limited", retry_after_seconds=RETRY_AFTER_S)
    admin.inject("rate_limit", account="throttled", retry_after_seconds=LONG_RETRY_AFTER_S)
    admin.inject("auth", account="expired")
    admin.inject("invalid", account="bulk", count=2, message="caption too long for this account")
    publish = cluster.publish
    ok_post = publish(client, "A plain post that goes out", ["sandbox:ok"])
    partial = publish(client, "Half of it goes out", ["sandbox:ok2", "sandbox:expired"])
    limited = publish(client, "Rate limited first, then out", ["sandbox:limited"])
    throttled = publish(client, "Held behind a closed gate", ["sandbox:throttled"])
    bulk = [publish(client, f"Bulk {n}", ["sandbox:bulk"]) for n in (1, 2)]
    confirm = [
        publish(client, f"Needs a look {n}", ["sandbox:confirm"], require_confirm=True)
        for n in (1, 2)
    ]
    run = Run(
        cluster=cluster,
        url=cluster.console_url,
        operator_token=client.create_token("olga", ac.ROLE_APPROVER).secret,
        viewer_token=client.create_token("vera", ac.ROLE_VIEWER).secret,
        ok_post=ok_post,
        partial_post=partial,
        limited_job=_job_of(client, limited, "limited"),
        throttled_job=_job_of(client, throttled, "throttled"),
        expired_job=_job_of(client, partial, "expired"),
        failed_jobs=(_job_of(client, bulk[0], "bulk"), _job_of(client, bulk[1], "bulk")),
        confirm_jobs=(
            _job_of(client, confirm[0], "confirm"),
            _job_of(client, confirm[1], "confirm"),
        ),
    )
    _wait_status(client, run.limited_job, pb.JOB_STATUS_SUCCEEDED)
    assert client.get_job(run.limited_job).rate_limited_count == 1
    _wait_status(client, run.expired_job, pb.JOB_STATUS_NEEDS_LOGIN)
    wait_until("the throttled job's 429", lambda: client.get_job(run.throttled_job).runs)
    _wait_status(client, _job_of(client, partial, "ok2"), pb.JOB_STATUS_SUCCEEDED)
    for job_id in run.failed_jobs:
        _wait_status(client, job_id, pb.JOB_STATUS_FAILED)
    for job_id in run.confirm_jobs:
        _wait_status(client, job_id, pb.JOB_STATUS_AWAITING_CONFIRM)
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    config = ClusterConfig(auth=True, retry_initial_s=0.2)
    with LocalCluster(tmp_path_factory.mktemp("console"), config) as cluster:
        cluster.start_sandbox()
        cluster.start_coordinator()
        cluster.start_worker(WORKER, platforms=("sandbox",), concurrency=4)
        cluster.wait_online([WORKER])
        cluster.start_console()
        with cluster.client() as client, cluster.sandbox_admin() as admin:
            yield _make_run(cluster, client, admin)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium with the workers' flags (never `playwright install`)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        yield chromium
        chromium.close()


def _signed_in(browser: Browser, run: Run, token: str, **options: object) -> BrowserContext:
    context = browser.new_context(base_url=run.url, **options)  # type: ignore[arg-type]
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    page.goto("/posts")
    expect(page).to_have_url(re.compile(r"/login\?next=/posts$"))  # nobody signed in yet
    page.get_by_label("Operator token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Posts", exact=True)).to_be_visible()
    page.close()
    return context


@pytest.fixture(scope="module")
def operator_context(browser: Browser, run: Run) -> Iterator[BrowserContext]:
    context = _signed_in(browser, run, run.operator_token)
    yield context
    context.close()


@pytest.fixture
def page(operator_context: BrowserContext) -> Iterator[Page]:
    page = operator_context.new_page()
    yield page
    page.close()


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _every_field_is_labelled(page: Page) -> None:
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select')]
                 .filter(e => e.labels.length === 0).map(e => e.name)"""
    )
    assert unlabelled == [], f"form fields without a label: {unlabelled}"


def test_every_page_shows_the_run(page: Page, run: Run) -> None:
    print(f"\nconsole screenshots: {ARTIFACTS}")
    page.goto("/posts")
    partial = page.locator("tbody.post", has=page.get_by_role("link", name=run.partial_post))
    expect(partial.locator(".warning")).to_contain_text("sandbox:expired needs a login")
    expect(partial.locator("tr")).to_have_count(2)  # one row per target
    expect(partial).to_contain_text("NEEDS_LOGIN")
    expect(partial).to_contain_text("SUCCEEDED")
    _every_field_is_labelled(page)
    page.keyboard.press("Tab")  # the keyboard's first stop skips the navigation
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    _shot(page, "posts")

    for view in ("week", "month"):
        page.goto(f"/calendar?view={view}")
        expect(page.get_by_role("link", name=re.compile("A plain post"))).to_be_visible()
        _shot(page, f"calendar-{view}")

    page.goto(f"/jobs/{run.limited_job}")
    expect(page.locator("h1")).to_contain_text("SUCCEEDED")
    expect(page.locator("section.run").last).to_contain_text("RATE_LIMITED")
    expect(page.locator("section.run").last).to_contain_text("429")
    expect(page.get_by_text("1 rate-limit answer(s) seen")).to_be_visible()
    expect(page.locator("a.permalink")).to_have_attribute(
        "href", re.compile(run.cluster.sandbox_url)
    )
    expect(page.locator("table.logs").first).to_be_visible()
    _shot(page, "job-rate-limited")

    page.goto(f"/posts/{run.partial_post}")
    expect(page.get_by_role("alert").first).to_contain_text("needs a login")
    _shot(page, "post-partial")

    page.goto("/ratelimits")
    limited = page.locator("tr", has=page.get_by_role("link", name="sandbox:limited"))
    expect(limited.locator("td").nth(1)).to_have_text("OPEN")
    expect(limited.locator("td").nth(4)).to_have_text("1")  # one 429 seen
    throttled = page.locator("tr", has=page.get_by_role("link", name="sandbox:throttled"))
    expect(throttled.locator("td").nth(1)).to_have_text("CLOSED")
    expect(throttled).to_contain_text("429")
    expect(throttled.locator("time")).to_be_visible()  # until when
    _shot(page, "ratelimits")

    page.goto("/devices")
    badge = page.locator("tr", has_text="sandbox:expired")
    expect(badge).to_contain_text("NEEDS_LOGIN")
    expect(badge.get_by_role("button", name="Check login of sandbox:expired")).to_be_visible()
    _every_field_is_labelled(page)
    _shot(page, "devices")

    page.goto(f"/audit?subject={run.limited_job}")
    expect(page.locator("table.audit")).to_contain_text("JOB_RETRY_SCHEDULED")
    expect(page.locator("table.audit")).to_contain_text("JOB_SUCCEEDED")
    _every_field_is_labelled(page)
    _shot(page, "audit")
    export = page.request.get(f"/audit.jsonl?subject={run.limited_job}")
    rows = [json.loads(line) for line in export.text().splitlines()]
    assert export.ok and {"JOB_RETRY_SCHEDULED", "JOB_SUCCEEDED"} <= {r["action"] for r in rows}
    assert all(isinstance(r["details"], dict) for r in rows)


def test_pages_read_without_javascript(browser: Browser, run: Run) -> None:
    context = _signed_in(browser, run, run.operator_token, java_script_enabled=False)
    page = context.new_page()
    page.goto(f"/jobs/{run.confirm_jobs[0]}")
    expect(page.locator("h1")).to_contain_text("AWAITING_CONFIRM")
    expect(page.locator("#live-status")).to_contain_text("reload to see changes")
    page.goto("/posts")
    expect(page.get_by_role("link", name=run.ok_post)).to_be_visible()
    context.close()


def test_job_page_shows_its_screenshot_and_follows_the_job_live(page: Page, run: Run) -> None:
    job_id = run.confirm_jobs[0]
    page.goto(f"/jobs/{job_id}")
    expect(page.locator("h1")).to_contain_text("AWAITING_CONFIRM")
    shot = page.locator("#before-confirm")
    expect(shot).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.getElementById('before-confirm');"
        " return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; }"
    )
    expect(page.locator("#live-status")).to_contain_text("Live")
    _shot(page, "job-awaiting-confirm")
    page.evaluate("window.__notReloaded = true")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    # The page's stream, as its script reads it, past every audit entry: step logs only.
    logs_only = f"{run.url}/events?after={2**62}&job={job_id}"
    with httpx.stream("GET", logs_only, cookies=cookies, timeout=EXPECT_TIMEOUT_MS / 1000) as sse:
        lines = sse.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: following"
        with run.cluster.client() as client:  # someone else confirms, elsewhere
            client.confirm_job(job_id, actor="other")
        # A step log line of the run, live (logs are not audited); a read timeout if none comes.
        log_line = next((line for line in lines if line.startswith('data: {"log"')), None)
    assert log_line is not None, "the stream ended without a step log line"
    expect(page.locator("h1")).to_contain_text("SUCCEEDED")
    assert page.evaluate("window.__notReloaded === true"), "the page was reloaded, not updated"
    expect(page.locator("table.audit")).to_contain_text("JOB_CONFIRMED")


def test_reopen_a_gate_then_retry_its_job_now(page: Page, run: Run) -> None:
    page.goto("/ratelimits")
    page.get_by_role("button", name="Reopen sandbox:throttled").click()
    expect(page.get_by_role("status").first).to_contain_text("Reopened the gate")
    throttled = page.locator("tr", has=page.get_by_role("link", name="sandbox:throttled"))
    expect(throttled.locator("td").nth(1)).to_have_text("OPEN")

    page.goto(f"/jobs/{run.throttled_job}")
    expect(page.locator("h1")).to_contain_text("QUEUED")  # still waiting for its Retry-After
    page.get_by_role("button", name="Retry now…").click()
    expect(page.get_by_role("alert")).to_contain_text("it may publish")
    page.get_by_role("button", name="Yes, retry now").click()
    expect(page.locator("h1")).to_contain_text("SUCCEEDED")


def test_confirm_from_the_page(page: Page, run: Run) -> None:
    job_id = run.confirm_jobs[1]
    page.goto(f"/jobs/{job_id}")
    page.get_by_role("button", name="Confirm and publish…").click()
    # Asked first, next to the screenshot of what goes out.
    expect(page.get_by_role("heading", name="Confirm and publish?")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("This cannot be undone")
    expect(page.get_by_role("img")).to_be_visible()
    _shot(page, "confirm-question")
    page.get_by_role("button", name="Yes, confirm and publish").click()
    expect(page).to_have_url(re.compile(f"/jobs/{job_id}$"))
    expect(page.get_by_role("status").first).to_contain_text(f"Confirmed job {job_id}")
    expect(page.locator("h1")).to_contain_text("SUCCEEDED")
    with run.cluster.client() as client:
        [confirmed] = client.list_audit_events(subject_id=job_id, action="JOB_CONFIRMED").events
    assert confirmed.actor == "user:olga"  # the person signed in, from their token


def test_bulk_retry_of_an_accounts_failed_jobs(page: Page, run: Run) -> None:
    page.goto("/jobs?platform=sandbox&account=bulk")
    expect(page.locator("table.jobs")).to_contain_text("INVALID_CONTENT")
    page.get_by_role("button", name=re.compile("Retry every failed job of sandbox:bulk")).click()
    expect(page.get_by_role("alert")).to_contain_text("FAILED or NEEDS_LOGIN job of sandbox:bulk")
    page.get_by_role("button", name=re.compile("^Yes, retry every failed job")).click()
    expect(page.get_by_role("status").first).to_contain_text(
        "Retrying 2 of 2 failed job(s) of sandbox:bulk now."
    )
    with run.cluster.client() as client:
        for job_id in run.failed_jobs:
            _wait_status(client, job_id, pb.JOB_STATUS_SUCCEEDED)
            [retried] = client.list_audit_events(subject_id=job_id, action="JOB_RETRY_NOW").events
            assert retried.actor == "user:olga"
    for job_id in run.failed_jobs:  # the page follows them, no reload
        row = page.locator("tr", has=page.get_by_role("link", name=job_id))
        expect(row.locator(".badge")).to_have_text("SUCCEEDED")
    _shot(page, "jobs-after-bulk-retry")


def test_a_viewer_sees_every_page_but_every_action_is_refused(browser: Browser, run: Run) -> None:
    context = _signed_in(browser, run, run.viewer_token)
    page = context.new_page()
    pages = ["/posts", "/calendar", "/jobs", "/ratelimits", "/devices", "/audit"]
    for path in [*pages, f"/jobs/{run.expired_job}", f"/posts/{run.partial_post}"]:
        assert page.goto(path).status == 200, path  # type: ignore[union-attr]
    expect(page.get_by_text("Signed in as user:vera (viewer)")).to_be_visible()

    page.goto(f"/jobs/{run.expired_job}")
    page.get_by_role("button", name="Retry now…").click()
    page.get_by_role("button", name="Yes, retry now").click()
    expect(page.get_by_role("heading")).to_contain_text("Retry now: refused")
    expect(page.get_by_role("alert")).to_contain_text("PERMISSION_DENIED")
    _shot(page, "viewer-refused")

    page.goto(f"/jobs/{run.expired_job}")  # a page with forms: their CSRF token
    csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
    ids = {"post_id": run.partial_post, "job_id": run.expired_job, "device_id": WORKER}
    fields = {**ids, "platform": "sandbox", "account": "expired", "confirmed": "yes"}
    for name in ACTIONS:
        answer = page.request.post(f"/act/{name}", form={**fields, "csrf": csrf})
        assert answer.status == 403 and "PERMISSION_DENIED" in answer.text(), name
    with run.cluster.client() as client:
        assert _status(client, run.expired_job) == pb.JOB_STATUS_NEEDS_LOGIN  # nothing moved
    context.close()


def test_a_stale_form_or_a_missing_job_gets_a_page_that_says_so(page: Page, run: Run) -> None:
    page.goto("/posts")
    answer = page.request.post("/act/retry", form={"job_id": run.expired_job, "confirmed": "yes"})
    assert answer.status == 403 and "not from this console" in answer.text()
    assert page.goto("/jobs/j-nope").status == 404  # type: ignore[union-attr]
    expect(page.get_by_role("heading")).to_have_text("Job j-nope: not done")
    expect(page.get_by_role("alert")).to_contain_text("NOT_FOUND")

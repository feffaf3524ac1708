"""The browser engine in real headless Chromium against a tiny local site (tests/browser_pages.py):
each outcome of a submit, the blocked second submit, the lease fence, a changed page, login walls
and challenges, proof screenshots, the account's one-job-at-a-time slot and the saved profile."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from asgi_thread import serve_in_thread
from browser_pages import COOKIE, PLAYBOOK, Site

from worker.adapters.base import JobSpec, Published
from worker.browser.adapter import BrowserAdapter
from worker.browser.host import STATE_FILE, BrowserAccount, BrowserHost
from worker.browser.playbook import parse_playbook
from worker.errors import (
    AuthRequired,
    InvalidContent,
    LeaseLost,
    RateLimited,
    Transient,
    UiChanged,
)
from worker.lifecycle import StepNote

pytestmark = pytest.mark.anyio
PNG = b"\x89PNG\r\n\x1a\n"


class Sink:
    """Records the steps an adapter reports, as JobTask would log them."""

    def __init__(self, *, refuse: str | None = None, bound_s: float = 3.0) -> None:
        self.steps: list[tuple[str, str]] = []
        self.refuse = refuse
        self.bound_s = bound_s

    def step(self, name: str) -> AbstractAsyncContextManager[StepNote]:
        return self._step(name)

    @asynccontextmanager
    async def _step(self, name: str) -> AsyncIterator[StepNote]:
        note = StepNote()
        yield note
        self.steps.append((name, note.message))

    def commit_refused(self) -> str | None:
        return self.refuse

    def commit_bound_s(self) -> float:
        return self.bound_s


@pytest.fixture
def site() -> Iterator[tuple[Site, str]]:
    s = Site()
    with serve_in_thread(s.app()) as url:
        yield s, url


@asynccontextmanager
async def browser_host(
    url: str, tmp_path: Path, *, logged_in: bool = True, playbook: str = PLAYBOOK
) -> AsyncIterator[BrowserHost]:
    account = BrowserAccount(
        platform="unit",
        account="alice",
        base_url=url,
        playbook=parse_playbook(playbook, source="unit.toml"),
    )
    host = BrowserHost([account], profiles_dir=tmp_path / "profiles")
    try:
        if logged_in:
            context = await host.context("unit", "alice")
            await context.add_cookies([{"name": COOKIE, "value": "yes", "url": url}])
        yield host
    finally:
        await host.aclose()


def job(text: str = "hello from a real browser") -> JobSpec:
    return JobSpec(job_id="j1", platform="unit", account="alice", text=text, platform_key="k")


async def publish(host: BrowserHost, sink: Sink, spec: JobSpec) -> Published:
    adapter = BrowserAdapter(host, "unit")
    adapter.bind_steps(sink)
    try:
        prepared = await adapter.prepare(spec)
        return await adapter.commit(spec, prepared)
    finally:
        await adapter.close()


async def test_accepted_post_is_published_with_steps_proof_and_a_saved_profile(
    site: tuple[Site, str], tmp_path: Path
) -> None:
    s, url = site
    async with browser_host(url, tmp_path) as host:
        sink = Sink()
        adapter = BrowserAdapter(host, "unit")
        adapter.bind_steps(sink)
        try:
            prepared = await adapter.prepare(job())
            shot = await adapter.screenshot("before_confirm")
            published = await adapter.commit(job(), prepared)
        finally:
            await adapter.close()
        assert published == Published("1", f"{url}/alice/status/1")
        assert s.posts == ["hello from a real browser"]
        assert [name for name, _ in sink.steps] == ["open_composer", "type_text", "submit"]
        assert sink.steps[-1][1] == "HTTP 201 accepted"
        assert shot is not None and shot.startswith(PNG) and len(shot) > 1000
        state = tmp_path / "profiles" / "unit" / "alice" / STATE_FILE
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert COOKIE in state.read_text()
        # verify_first finds it on the profile page, by its text
        finder = BrowserAdapter(host, "unit")
        try:
            found = await finder.verify(job("hello  from a real\nbrowser"))
            missing = await finder.verify(job("another post"))
        finally:
            await finder.close()
        assert found == Published("1", f"{url}/alice/status/1")
        assert missing is None


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [("rate", RateLimited, "slow down"), ("invalid", InvalidContent, "too long")],
)
async def test_rejected_submit_carries_the_platforms_message(
    site: tuple[Site, str], tmp_path: Path, mode: str, error: type[Exception], message: str
) -> None:
    s, url = site
    s.mode = mode
    async with browser_host(url, tmp_path) as host:
        with pytest.raises(error) as raised:
            await publish(host, Sink(), job())
    assert f"the platform said: {message}" in str(raised.value)
    if isinstance(raised.value, RateLimited):
        assert 20 < raised.value.retry_at - time.time() <= 31


@pytest.mark.parametrize(
    ("mode", "bound_s", "submits", "said"),
    [
        # Sent, no answer within the lease-margin bound: the post may exist.
        ("hang", 1.5, 1, ["in doubt", "no answer to the submit within 1.5s"]),
        # The button did nothing: nothing was sent, a retry is safe.
        ("nosubmit", 1.0, 0, ["not submitted"]),
    ],
)
async def test_a_submit_without_an_answer_says_whether_it_was_sent(
    site: tuple[Site, str],
    tmp_path: Path,
    mode: str,
    bound_s: float,
    submits: int,
    said: list[str],
) -> None:
    s, url = site
    s.mode = mode
    async with browser_host(url, tmp_path) as host:
        with pytest.raises(Transient) as raised:
            await publish(host, Sink(bound_s=bound_s), job())
    assert raised.value.not_created is (submits == 0)
    for words in said:
        assert words in str(raised.value)
    assert s.submits == submits


async def test_a_second_submit_is_blocked(site: tuple[Site, str], tmp_path: Path) -> None:
    s, url = site
    s.mode = "double"
    sink = Sink()
    async with browser_host(url, tmp_path) as host:
        published = await publish(host, sink, job())
    assert published.post_id == "1"
    assert s.posts == ["hello from a real browser"] and s.submits == 1
    assert "blocked 1 more submit" in sink.steps[-1][1]


async def test_no_submit_leaves_once_the_lease_is_lost(
    site: tuple[Site, str], tmp_path: Path
) -> None:
    s, url = site
    async with browser_host(url, tmp_path) as host:
        with pytest.raises(LeaseLost, match=r"lease has 0\.5s left"):
            await publish(host, Sink(refuse="lease has 0.5s left"), job())
    assert s.submits == 0


async def test_a_missing_selector_is_ui_changed_naming_step_and_selector(
    site: tuple[Site, str], tmp_path: Path
) -> None:
    s, url = site
    s.mode = "changed"
    async with browser_host(url, tmp_path) as host:
        adapter = BrowserAdapter(host, "unit")
        try:
            with pytest.raises(UiChanged) as raised:
                await adapter.prepare(job())
            shot = await adapter.screenshot("on_failure")
        finally:
            await adapter.close()
    assert raised.value.step == "type_text"
    assert raised.value.selector == "[data-testid=composer]"
    assert "not found within 3000 ms" in raised.value.message
    assert shot is not None and shot.startswith(PNG)


async def test_a_missing_submit_button_is_ui_changed_not_a_retry(
    site: tuple[Site, str], tmp_path: Path
) -> None:
    s, url = site
    s.mode = "button_changed"
    async with browser_host(url, tmp_path) as host:
        with pytest.raises(UiChanged) as raised:
            await publish(host, Sink(), job())
    assert raised.value.step == "submit"
    assert raised.value.selector == "[data-testid=post-button]"
    assert s.submits == 0


async def test_login_wall_and_challenge_are_auth_required(
    site: tuple[Site, str], tmp_path: Path
) -> None:
    s, url = site
    async with browser_host(url, tmp_path, logged_in=False) as host:
        with pytest.raises(AuthRequired, match="login wall"):
            await publish(host, Sink(), job())
        with pytest.raises(AuthRequired, match="login wall"):
            await BrowserAdapter(host, "unit").check_login("alice")
    s.mode = "challenge"
    async with browser_host(url, tmp_path) as host:
        assert await BrowserAdapter(host, "unit").check_login("alice") is True
        with pytest.raises(AuthRequired, match=r"challenge page .*not solved"):
            await publish(host, Sink(), job())
    assert s.submits == 0


async def test_one_job_at_a_time_per_browser_account(
    site: tuple[Site, str], tmp_path: Path
) -> None:
    _, url = site
    async with browser_host(url, tmp_path) as host:
        first, second = BrowserAdapter(host, "unit"), BrowserAdapter(host, "unit")
        await first.prepare(job())
        done = anyio.Event()

        async def prepare_second() -> None:
            await second.prepare(job("second"))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(prepare_second)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()  # waits for the account's running job
            await first.close()
            with anyio.fail_after(30):
                await done.wait()
        await second.close()


async def test_a_new_login_on_disk_is_picked_up_not_overwritten(
    site: tuple[Site, str], tmp_path: Path
) -> None:
    s, url = site
    async with browser_host(url, tmp_path, logged_in=False) as host:
        with pytest.raises(AuthRequired):
            await BrowserAdapter(host, "unit").check_login("alice")
        # `postroom browser-login` (another process) writes the profile while the worker runs
        state = tmp_path / "profiles" / "unit" / "alice" / STATE_FILE
        state.parent.mkdir(parents=True, exist_ok=True)
        cookie = {"name": COOKIE, "value": "yes", "domain": "127.0.0.1", "path": "/"}
        state.write_text(json.dumps({"cookies": [cookie], "origins": []}))
        await host.save("unit", "alice")  # the stale context must not overwrite it
        assert COOKIE in state.read_text()
        assert await BrowserAdapter(host, "unit").check_login("alice") is True
        assert (await publish(host, Sink(), job())).post_id == "1"
    assert s.posts == ["hello from a real browser"]


async def test_no_compose_step_can_submit(site: tuple[Site, str], tmp_path: Path) -> None:
    s, url = site
    clicking = PLAYBOOK.replace(
        "[commit]",
        '[[compose]]\nname = "press_post_early"\naction = "click"\n'
        'selector = "[data-testid=post-button]"\n\n[commit]',
    )
    async with browser_host(url, tmp_path, playbook=clicking) as host:
        with pytest.raises(UiChanged) as raised:
            await publish(host, Sink(), job())
    assert raised.value.step == "press_post_early"
    assert "sent the submit request before the commit step" in raised.value.message
    assert s.submits == 0 and s.posts == []

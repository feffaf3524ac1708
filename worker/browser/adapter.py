"""The per-job `PlatformAdapter` of a browser account: one page in the account's context.

The account's slot (one job at a time per browser account) is taken on the job's first call and
given back in `close`, where the page closes and the context's state is saved to the profile.
"""

from __future__ import annotations

import logging
from urllib.parse import urljoin

import anyio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Response

from worker.adapters.base import AdapterFactory, JobSpec, PlatformAdapter, Prepared, Published
from worker.browser.engine import NoSteps, PageRun, id_from, normalise
from worker.browser.host import BrowserAccount, BrowserHost
from worker.browser.playbook import Step, fill_template, json_path
from worker.errors import Transient
from worker.lifecycle import StepSink

log = logging.getLogger("postroom.worker.browser")

_LOGIN_CHECK_S = 10.0


class BrowserAdapter:
    def __init__(self, host: BrowserHost, platform: str) -> None:
        self._host = host
        self.platform = platform
        self._sink: StepSink = NoSteps()
        self._run: PageRun | None = None
        self._slot: anyio.Semaphore | None = None
        self._account: BrowserAccount | None = None

    def bind_steps(self, sink: StepSink) -> None:
        self._sink = sink

    async def _page(self, account: str) -> PageRun:
        if self._run is not None:
            return self._run
        self._account = self._host.account(self.platform, account)
        slot = self._host.slot(self.platform, account)
        if slot.value == 0:
            log.info("%s: waiting for the account's running job", self._account.label)
        await slot.acquire()
        self._slot = slot
        context = await self._host.context(self.platform, account)
        page = await context.new_page()
        self._run = PageRun(page, self._account, self._sink)
        await self._run.start()
        return self._run

    # ---- PlatformAdapter ----------------------------------------------------------------------

    async def verify(self, job: JobSpec) -> Published | None:
        run = await self._page(job.account)
        spec = run.playbook.verify
        if spec is None:
            return None
        step = Step(name="verify_page", action="goto", url=spec.url)
        async with self._sink.step("verify_page") as note:
            url = fill_template(spec.url, run.account.values())
            await run.goto(url, step)
            if spec.ready_selector:
                ready = Step(name="verify_page", action="wait_for", selector=spec.ready_selector)
                await run.run_step(ready, {}, [])
            note.message = f"goto {url}"
        wanted = normalise(job.text)
        items = run.page.locator(spec.item_selector)
        for index in range(min(await items.count(), spec.max_items)):
            item = items.nth(index)
            try:
                shown = item.locator(spec.text_selector) if spec.text_selector else item
                if normalise(await shown.first.inner_text(timeout=2000)) != wanted:
                    continue
                href = None
                if spec.link_selector:
                    link = item.locator(spec.link_selector).first
                    href = await link.get_attribute(spec.link_attribute, timeout=2000)
            except PlaywrightError:
                continue
            url = run.page.url if href is None else _absolute(run.page.url, href)
            pattern = spec.id_from_url or run.playbook.permalink.id_from_url
            return Published(post_id=id_from(url, pattern) or url, url=url)
        return None

    async def prepare(self, job: JobSpec) -> Prepared:
        run = await self._page(job.account)
        media = await self._host.media.load_all(job.media)
        await run.compose(job.text, media)
        return Prepared(summary=f"composer filled ({run.playbook.label})")

    async def commit(self, job: JobSpec, prepared: Prepared) -> Published:
        run = await self._page(job.account)
        _, response, data, left = await run.commit()
        marked = await run.marker(run.playbook.commit.success, left)
        if not marked:
            log.warning("%s: accepted, but no success marker on the page", run.account.label)
        return await self._permalink(run, response, data, left)

    async def _permalink(
        self, run: PageRun, response: Response, data: object, left: float
    ) -> Published:
        spec = run.playbook.permalink
        url: str | None = None
        post_id = _text(json_path(data, spec.id_json)) if spec.id_json else None
        if spec.url_json:
            url = _text(json_path(data, spec.url_json))
        if url is None and spec.url_selector:
            url = await run.attribute(spec.url_selector, spec.url_attribute, max(left, 2.0))
        if url is not None and post_id is None:
            post_id = id_from(url, spec.id_from_url) or url
        if url is None and post_id is not None and spec.url_template:
            url = fill_template(spec.url_template, run.account.values(post_id=post_id))
        if post_id is None:
            raise Transient(
                f"HTTP {response.status} accepted the post, but its id was not found "
                f"(playbook {run.playbook.label} [permalink]); in doubt: the next attempt "
                "looks it up before posting again"
            )
        return Published(post_id=post_id, url=url or "")

    async def screenshot(self, label: str) -> bytes | None:
        if self._run is None or self._run.page.is_closed():
            return None
        return await self._run.screenshot()

    async def check_login(self, account: str) -> bool:
        """Opens its own page, without the account's slot (it only looks)."""
        browser_account = self._host.account(self.platform, account)
        context = await self._host.context(self.platform, account)
        page = await context.new_page()
        try:
            run = PageRun(page, browser_account, NoSteps())
            await run.start()
            ok = await run.logged_in(timeout_s=_LOGIN_CHECK_S)
            await self._host.save(self.platform, account)
            return ok
        finally:
            await page.close()

    async def close(self) -> None:
        try:
            if self._run is not None and self._account is not None:
                await self._run.page.close()
                await self._host.save(self._account.platform, self._account.account)
        except PlaywrightError:
            log.warning("closing a job's page failed", exc_info=True)
        finally:
            self._run = None
            if self._slot is not None:
                self._slot.release()
                self._slot = None


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _absolute(base: str, href: str) -> str:
    return urljoin(base, href)


def browser_adapters(host: BrowserHost) -> AdapterFactory:
    """The factory of per-job adapters on `host`'s accounts (for the worker's registry)."""

    def make(platform: str) -> PlatformAdapter:
        return BrowserAdapter(host, platform)

    return make

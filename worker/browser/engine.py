"""One job's page, driven by its playbook: steps, login probes, the watched submit, verify.

The submit is judged from the network, not from what the page shows: the request matching
[commit].response is watched from the moment the page opens (page.route, page.on("response"),
page.on("requestfailed")).

- Before the commit step, a matching request is aborted: no compose step may post.
- In the commit step, the first one leaves only if the lease still allows it (`commit_refused`,
  asked with no await between the answer and letting the request go, like worker/fence.py does
  for httpx); every later one is aborted (a double click, a page script retrying).
- Its answer, classed by the playbook's outcome rules: accepted, rejected (with the platform's
  message), duplicate, unknown. No request left: not submitted (nothing posted, safe to retry).
  Left but no answer in time, or failed on the network: in doubt (the next attempt looks first).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import urljoin

import anyio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Request, Response, Route
from playwright.async_api import TimeoutError as PlaywrightTimeout

from worker.browser.host import BrowserAccount
from worker.browser.playbook import (
    OutcomeRule,
    Probe,
    ResponseMatch,
    Step,
    fill_template,
    json_path,
)
from worker.errors import (
    AdapterError,
    AuthRequired,
    Duplicate,
    InvalidContent,
    LeaseLost,
    RateLimited,
    Transient,
    UiChanged,
)
from worker.lifecycle import StepNote, StepSink
from worker.media import MediaFile

log = logging.getLogger("postroom.worker.browser")

_BLOCKED = "blockedbyclient"
_SLACK_S = 2.0  # beyond a step's own Playwright timeout, before the step is cut off
_MIN_MARKER_S = 1.0
_DEFAULT_RETRY_AFTER_S = 60.0
_SHOWN_MESSAGE_CHARS = 300
_CLICK_SHARE_OF_STEP = 0.8  # of the commit step's bound; the rest is for the request to leave


class NoSteps:
    """The sink outside a job (login checks, tests, the bench): steps are not reported and
    nothing holds a lease."""

    def __init__(self, commit_bound_s: float = 5.0) -> None:
        self._bound = commit_bound_s

    def step(self, name: str) -> AbstractAsyncContextManager[StepNote]:
        return self._step()

    @asynccontextmanager
    async def _step(self) -> AsyncIterator[StepNote]:
        yield StepNote()

    def commit_refused(self) -> str | None:
        return None

    def commit_bound_s(self) -> float:
        return self._bound


class SubmitWatch:
    """The submit request of one page: what left, what came back, what was stopped."""

    def __init__(self, match: ResponseMatch) -> None:
        self.match = match
        self.armed = False
        self.fence: Callable[[], str | None] = lambda: None
        self.sent: Request | None = None
        self.response: Response | None = None
        self.failure: str | None = None
        self.refusal: str | None = None
        self.blocked: list[str] = []
        self.left = anyio.Event()  # the submit left, or the fence stopped it
        self.done = anyio.Event()  # its answer came, or it failed, or the fence stopped it

    async def install(self, page: Page) -> None:
        await page.route(lambda url: self.match.url.search(url) is not None, self._route)
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_failed)

    def arm(self, fence: Callable[[], str | None]) -> None:
        self.armed, self.fence = True, fence

    async def _route(self, route: Route, request: Request) -> None:
        if request.method.upper() != self.match.method:
            await route.fallback()
            return
        if not self.armed:
            self.blocked.append(f"{request.method} {request.url} before the commit step")
            await route.abort(_BLOCKED)
            return
        if self.sent is not None:
            self.blocked.append(f"a second {request.method} {request.url}")
            await route.abort(_BLOCKED)
            return
        reason = self.fence()
        if reason is not None:
            self.refusal = reason
            self.armed = False
            await route.abort(_BLOCKED)
            self.left.set()
            self.done.set()
            return
        self.sent = request
        self.left.set()
        await route.continue_()

    def _on_response(self, response: Response) -> None:
        if self.sent is not None and response.request is self.sent:
            self.response = response
            self.done.set()

    def _on_failed(self, request: Request) -> None:
        if self.sent is not None and request is self.sent:
            self.failure = request.failure or "failed"
            self.done.set()


class PageRun:
    def __init__(self, page: Page, account: BrowserAccount, sink: StepSink) -> None:
        self.page = page
        self.account = account
        self.playbook = account.playbook
        self.sink = sink
        self.watch = SubmitWatch(self.playbook.commit.response)

    async def start(self) -> None:
        await self.watch.install(self.page)

    # ---- steps ------------------------------------------------------------------------------

    async def compose(self, text: str, media: list[MediaFile]) -> None:
        values = self.account.values(text=text)
        for step in self.playbook.compose:
            if not step.applies(bool(media)):
                continue
            async with self.sink.step(step.name) as note:
                note.message = await self.run_step(step, values, media)
                if self.watch.blocked:
                    raise UiChanged(
                        f"step {step.name!r} sent the submit request before the commit step "
                        f"(blocked: {self.watch.blocked[0]}); playbook {self.playbook.label}",
                        step=step.name,
                        selector=step.selector or "",
                    )

    async def run_step(self, step: Step, values: dict[str, str], media: list[MediaFile]) -> str:
        """Do one step within its bound; a note for its log line."""
        if step.action == "goto":
            url = fill_template(step.url or "", values)
            await self.goto(url, step)
            return f"goto {url}"
        try:
            with anyio.fail_after(step.timeout_ms / 1000 + _SLACK_S):
                await self._act(step, values, media)
        except (PlaywrightError, TimeoutError) as exc:
            await self.raise_if_walled(step.name)
            raise self.ui_changed(step, exc) from None
        return f"{step.action} {step.selector or step.key}"

    async def _act(self, step: Step, values: dict[str, str], media: list[MediaFile]) -> None:
        page, ms = self.page, step.timeout_ms
        value = fill_template(step.value, values) if step.value is not None else ""
        loc = page.locator(step.selector) if step.selector else None
        match step.action:
            case "fill":
                assert loc is not None
                await loc.fill(value, timeout=ms)
            case "type":
                assert loc is not None
                await loc.press_sequentially(value, timeout=ms)
            case "click":
                assert loc is not None
                await loc.click(timeout=ms)
            case "press":
                if loc is not None:
                    await loc.press(step.key or "", timeout=ms)
                else:
                    await page.keyboard.press(step.key or "")
            case "upload":
                assert loc is not None
                files = [
                    {"name": m.filename, "mimeType": m.content_type, "buffer": m.data}
                    for m in media
                ]
                await loc.set_input_files(files, timeout=ms)  # type: ignore[arg-type]
            case "wait_for":
                assert loc is not None
                await loc.wait_for(state="visible", timeout=ms)
            case "select":
                assert loc is not None
                await loc.select_option(value, timeout=ms)
            case _:  # "goto" is handled by run_step
                raise AssertionError(step.action)

    async def goto(self, url: str, step: Step) -> None:
        try:
            with anyio.fail_after(step.timeout_ms / 1000 + _SLACK_S):
                await self.page.goto(url, timeout=step.timeout_ms)
        except (PlaywrightError, TimeoutError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "timed out"
            raise Transient(f"step {step.name!r}: cannot open {url}: {first}") from None
        await self.raise_if_walled(step.name)

    def ui_changed(self, step: Step, exc: BaseException) -> AdapterError:
        """A step that failed on the page: UI_CHANGED, unless the page or Chromium itself is
        gone (a crash, a closed tab): that says nothing about the site."""
        selector = step.selector or step.key or ""
        if (
            self.page.is_closed()
            or not self.page.context.browser
            or not (self.page.context.browser.is_connected())
        ):
            return Transient(f"step {step.name!r}: the browser page is gone ({exc})")
        if isinstance(exc, PlaywrightTimeout | TimeoutError):
            what = f"not found within {step.timeout_ms} ms"
        else:
            what = f"failed: {str(exc).strip().splitlines()[0]}"
        return UiChanged(
            f"step {step.name!r}: selector {selector!r} {what} (playbook {self.playbook.label}; "
            "if the site changed, edit the playbook)",
            step=step.name,
            selector=selector,
        )

    # ---- probes -----------------------------------------------------------------------------

    async def raise_if_walled(self, step: str) -> None:
        """AUTH_REQUIRED when the page is a login wall or a challenge (never solved)."""
        login = self.playbook.login
        how = f"a person must log in: postroom browser-login --platform {self.account.platform}"
        how += f" --account {self.account.account}"
        found = await self.any_signal(login.challenge)
        if found is not None:
            raise AuthRequired(f"step {step!r}: challenge page ({found}); not solved here; {how}")
        found = await self.any_signal(login.login_wall)
        if found is not None:
            raise AuthRequired(f"step {step!r}: login wall ({found}); {how}")

    async def any_signal(self, probe: Probe) -> str | None:
        """The first signal of `probe` the page shows now, described; None when none."""
        page = self.page
        for part in probe.url_contains:
            if part in page.url:
                return f"URL contains {part!r}"
        try:
            if probe.selector and await page.locator(probe.selector).count() > 0:
                return f"selector {probe.selector!r} present"
            if probe.text and probe.text in await page.locator("body").inner_text(timeout=2000):
                return f"text {probe.text!r} shown"
            if probe.cookie and probe.cookie in await self._cookie_names():
                return f"cookie {probe.cookie!r} set"
        except PlaywrightError:
            return None  # a page in the middle of navigating: not a signal
        return None

    async def all_signals(self, probe: Probe) -> bool:
        page = self.page
        if not all(part in page.url for part in probe.url_contains):
            return False
        try:
            if probe.selector and await page.locator(probe.selector).count() == 0:
                return False
            if probe.cookie and probe.cookie not in await self._cookie_names():
                return False
        except PlaywrightError:
            return False
        return True

    async def _cookie_names(self) -> set[str]:
        return {c.get("name", "") for c in await self.page.context.cookies(self.page.url)}

    async def logged_in(self, *, timeout_s: float) -> bool:
        """Open check_url and poll until a decision: True logged in; AuthRequired at a wall or
        challenge; UiChanged when the page is none of these by `timeout_s`."""
        login = self.playbook.login
        step = Step(name="login_check", action="goto", url=login.check_url)
        await self.goto(fill_template(login.check_url, self.account.values()), step)
        with anyio.move_on_after(timeout_s):
            while True:
                await self.raise_if_walled("login_check")
                if await self.all_signals(login.logged_in):
                    return True
                await anyio.sleep(0.2)
        raise UiChanged(
            f"login check: the page at {self.page.url} is neither logged in ("
            f"{login.logged_in.selector or login.logged_in.cookie!r}) nor a login page "
            f"(playbook {self.playbook.label})",
            step="login_check",
            selector=login.logged_in.selector or "",
        )

    # ---- the commit -------------------------------------------------------------------------

    async def commit(self) -> tuple[OutcomeRule, Response, object, float]:
        """Run the commit step: the accepted rule, the response, its JSON and the seconds of
        the answer's bound left; every other outcome raises.

        The step's own timeout bounds the click until the request leaves (the fence decides,
        at that moment, whether the lease still allows it); the wait for the answer is then
        bounded by `commit_bound_s`, shorter than the lease margin."""
        step = self.playbook.commit.step
        step_s = step.timeout_ms / 1000
        answer_s = min(step_s, self.sink.commit_bound_s())
        left = 0.0
        async with self.sink.step(step.name) as note:
            self.watch.arm(self.sink.commit_refused)
            try:
                with anyio.move_on_after(step_s):
                    # The click's own bound ends first, so a missing button is reported as a
                    # changed page (UI_CHANGED), not cut off by this scope as "not submitted".
                    await self._trigger(step, step_s * _CLICK_SHARE_OF_STEP)
                    await self.watch.left.wait()
                if self.watch.sent is not None:
                    sent_at = anyio.current_time()
                    with anyio.move_on_after(answer_s):
                        await self.watch.done.wait()
                    left = answer_s - (anyio.current_time() - sent_at)
            finally:
                self.watch.armed = False
            rule, response, data = await self._judge(step_s, answer_s)
            note.message = f"HTTP {response.status} {rule.result}" + self._blocked_note()
            return rule, response, data, left

    async def _trigger(self, step: Step, bound_s: float) -> None:
        ms = max(1, int(bound_s * 1000))
        try:
            if step.action == "click":
                await self.page.locator(step.selector or "").click(timeout=ms)
            elif step.selector:
                await self.page.locator(step.selector).press(step.key or "", timeout=ms)
            else:
                await self.page.keyboard.press(step.key or "")
        except PlaywrightError as exc:
            if self.watch.sent is None:  # nothing left: a missing button is a changed page
                await self.raise_if_walled(step.name)
                raise self.ui_changed(step, exc) from None
            # the request left; the click's own error (a page that navigated) does not matter

    async def _judge(self, step_s: float, answer_s: float) -> tuple[OutcomeRule, Response, object]:
        w, name = self.watch, self.playbook.commit.step.name
        if w.refusal is not None:
            raise LeaseLost(f"not submitting: {w.refusal}")
        if w.sent is None:
            await self.raise_if_walled(name)
            raise Transient(
                f"step {name!r}: not submitted: no submit request left within {step_s:.1f}s "
                "(nothing was posted)",
                not_created=True,
            )
        doubt = "in doubt: the next attempt looks on the platform before posting again"
        if w.failure is not None:
            raise Transient(f"step {name!r}: the submit request failed ({w.failure}); {doubt}")
        if w.response is None:
            raise Transient(
                f"step {name!r}: no answer to the submit within {answer_s:.1f}s; {doubt}"
            )
        response = w.response
        body = await self._body(response)
        data = _parse_json(body)
        for rule in self.playbook.commit.outcomes:
            if _rule_matches(rule, response.status, body, data):
                if rule.result == "accepted":
                    return rule, response, data
                raise await self._rejection(rule, response, data, doubt)
        raise Transient(f"step {name!r}: HTTP {response.status} matches no outcome rule; {doubt}")

    async def _rejection(
        self, rule: OutcomeRule, response: Response, data: object, doubt: str
    ) -> AdapterError:
        message = await self._message(rule, data) or f"HTTP {response.status}"
        said = f"the platform said: {message} (HTTP {response.status})"
        if rule.result == "duplicate":
            return Duplicate(said, http_status=response.status)
        if rule.result == "unknown":
            return Transient(f"{said}; {doubt}", http_status=response.status)
        match rule.error_class:
            case "RATE_LIMITED":
                return RateLimited(
                    said,
                    retry_at=self._retry_at(rule, response),
                    quota_cap=False,
                    http_status=response.status,
                )
            case "AUTH_REQUIRED":
                return AuthRequired(said, http_status=response.status)
            case "INVALID_CONTENT":
                return InvalidContent(said, http_status=response.status)
        return Transient(said, http_status=response.status, not_created=True)

    def _retry_at(self, rule: OutcomeRule, response: Response) -> float:
        raw = response.headers.get((rule.retry_after_header or "retry-after").lower(), "")
        try:
            seconds = float(raw)
        except ValueError:
            seconds = _DEFAULT_RETRY_AFTER_S
        return time.time() + max(0.0, seconds)

    async def _message(self, rule: OutcomeRule, data: object) -> str | None:
        if rule.message_json:
            found = json_path(data, rule.message_json)
            if found is not None:
                return str(found)[:_SHOWN_MESSAGE_CHARS]
        if rule.message_selector:
            try:
                text = await self.page.locator(rule.message_selector).first.inner_text(timeout=2000)
                return " ".join(text.split())[:_SHOWN_MESSAGE_CHARS]
            except PlaywrightError:
                pass
        return rule.message

    async def _body(self, response: Response) -> bytes:
        try:
            with anyio.move_on_after(5):
                return await response.body()
        except PlaywrightError:
            pass
        return b""

    def _blocked_note(self) -> str:
        if not self.watch.blocked:
            return ""
        return f"; blocked {len(self.watch.blocked)} more submit(s): {self.watch.blocked[0]}"

    # ---- reading the page -------------------------------------------------------------------

    async def marker(self, probe: Probe, timeout_s: float) -> bool:
        """Whether the success marker shows within `timeout_s` (True when none is asked)."""
        if probe.empty:
            return True
        with anyio.move_on_after(max(timeout_s, _MIN_MARKER_S)):
            # Polled: a page offers no event for "this text appeared".
            while await self.any_signal(probe) is None:  # noqa: ASYNC110
                await anyio.sleep(0.1)
            return True
        return False

    async def attribute(self, selector: str, name: str, timeout_s: float) -> str | None:
        try:
            loc = self.page.locator(selector).first
            value = await loc.get_attribute(name, timeout=int(timeout_s * 1000))
        except PlaywrightError:
            return None
        return urljoin(self.page.url, value) if value else None

    async def screenshot(self) -> bytes:
        return await self.page.screenshot(full_page=True, type="png", timeout=15_000)


def _parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _rule_matches(rule: OutcomeRule, status: int, body: bytes, data: object) -> bool:
    if not rule.matches_status(status):
        return False
    if rule.body_contains and rule.body_contains.encode() not in body:
        return False
    return not (rule.json_has and json_path(data, rule.json_has) is None)


def normalise(text: str) -> str:
    return " ".join(text.split())


def id_from(url: str, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return None
    found = pattern.search(url)
    if found is None:
        return None
    return found.group(1) if found.groups() else found.group(0)

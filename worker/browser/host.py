"""The browser side of a worker: one Chromium for the worker's life, one context per account.

    BrowserHost                       built once from the accounts file's browser accounts
    ├── Chromium (one process, launched on first use, Debian's /usr/bin/chromium)
    └── BrowserContext per (platform, account), made from
        <profiles-dir>/<platform>/<account>/storage-state.json and kept open; the state is
        written back (mode 0600: it is a credential, never logged) after each job and login.

Why not `launch_persistent_context`: it starts one Chromium process per profile, and a worker
with ten accounts would run ten browsers. One browser with a context per account costs one
renderer per open page instead. What survives a restart is what `storage_state` keeps: cookies
and localStorage (a login kept only in sessionStorage or IndexedDB does not).

Each browser account runs one job at a time (`slot`): two jobs typing into one profile's
composer would mix their posts. The coordinator knows this from Hello.per_account_slots = 1;
the slot is the worker's own guard as well.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright

from postroom.clock import Clock, SystemClock
from worker.accounts import AccountConfig, AccountsError
from worker.browser.playbook import Playbook, PlaybookError, load_playbook
from worker.config import Capability
from worker.errors import Transient
from worker.media import MediaLoader

log = logging.getLogger("postroom.worker.browser")

CHROMIUM = "/usr/bin/chromium"
# toolchain.md: without the background-networking flags Chromium hammers the closed network.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DEFAULT_PROFILES_DIR = Path("~/.local/share/postroom/profiles")
STATE_FILE = "storage-state.json"
VIEWPORT = {"width": 1280, "height": 900}
PLAYBOOK_OPTION = "playbook"


@dataclass(frozen=True, slots=True, kw_only=True)
class BrowserAccount:
    platform: str
    account: str
    base_url: str
    playbook: Playbook

    @property
    def label(self) -> str:
        return f"{self.platform}:{self.account}"

    def values(self, **more: str) -> dict[str, str]:
        """The template values of this account (plus `more`)."""
        return {"base_url": self.base_url, "account": self.account, **more}


def is_browser_account(account: AccountConfig) -> bool:
    return PLAYBOOK_OPTION in account.options


def browser_account(account: AccountConfig, *, relative_to: Path | None = None) -> BrowserAccount:
    """The account's playbook, loaded and checked; AccountsError naming the account."""
    ref = account.str_option(PLAYBOOK_OPTION)
    if account.credentials:
        raise AccountsError(
            f"account {account.label}: a browser account takes no credentials (its login lives "
            "in its browser profile: postroom browser-login)"
        )
    if "/" in account.account or account.account.startswith("."):
        raise AccountsError(f"account {account.label}: a browser account's name names a folder")
    try:
        playbook = load_playbook(ref, relative_to=relative_to)
    except PlaybookError as exc:
        raise AccountsError(f"account {account.label}: {exc}") from None
    if playbook.platform != account.platform:
        raise AccountsError(
            f"account {account.label}: playbook {playbook.label} serves platform "
            f"{playbook.platform!r}, not {account.platform!r}"
        )
    return BrowserAccount(
        platform=account.platform,
        account=account.account,
        base_url=account.base_url,
        playbook=playbook,
    )


def profile_dir(profiles_dir: Path, platform: str, account: str) -> Path:
    return profiles_dir.expanduser() / platform / account


async def launch_chromium(
    playwright: Playwright, *, headless: bool = True, extra_args: Iterable[str] = ()
) -> Browser:
    return await playwright.chromium.launch(
        executable_path=CHROMIUM, headless=headless, args=[*CHROMIUM_ARGS, *extra_args]
    )


async def open_context(browser: Browser, profile: Path) -> BrowserContext:
    """A context from the profile's saved state (a fresh one when there is none yet)."""
    state = profile / STATE_FILE
    return await browser.new_context(
        storage_state=state if state.is_file() else None,
        viewport={"width": VIEWPORT["width"], "height": VIEWPORT["height"]},
    )


async def save_state(context: BrowserContext, profile: Path) -> None:
    """Write the context's cookies and localStorage, readable by this user only."""
    state = await context.storage_state()
    await anyio.to_thread.run_sync(_write_state, profile, dict(state))


def _write_state(profile: Path, state: dict[str, object]) -> None:
    profile.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = profile / f".{STATE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle)
    os.replace(tmp, profile / STATE_FILE)


def _stamp(profile: Path) -> int | None:
    try:
        return (profile / STATE_FILE).stat().st_mtime_ns
    except FileNotFoundError:
        return None


class UnknownBrowserAccount(Transient):
    """This worker has no browser profile for the job's account (another worker may)."""


class BrowserHost:
    def __init__(
        self,
        accounts: Sequence[BrowserAccount],
        *,
        profiles_dir: Path = DEFAULT_PROFILES_DIR,
        media: MediaLoader | None = None,
        clock: Clock | None = None,
        headless: bool = True,
    ) -> None:
        self.accounts = {(a.platform, a.account): a for a in accounts}
        self.profiles_dir = profiles_dir
        self.media = media or MediaLoader(media_dirs=())
        self.clock = clock or SystemClock()
        self.headless = headless
        self._slots = {key: anyio.Semaphore(1) for key in self.accounts}
        self._contexts: dict[tuple[str, str], BrowserContext] = {}
        # The profile file's mtime when its context was made or last saved.
        self._stamps: dict[tuple[str, str], int | None] = {}
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._lock = anyio.Lock()

    def capabilities(self) -> tuple[Capability, ...]:
        return tuple(Capability(platform, account) for platform, account in self.accounts)

    def platforms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(platform for platform, _ in self.accounts))

    def account(self, platform: str, account: str) -> BrowserAccount:
        found = self.accounts.get((platform, account))
        if found is None:
            raise UnknownBrowserAccount(
                f"this worker has no browser profile for {platform}:{account}"
            )
        return found

    def slot(self, platform: str, account: str) -> anyio.Semaphore:
        self.account(platform, account)
        return self._slots[(platform, account)]

    def profile(self, platform: str, account: str) -> Path:
        return profile_dir(self.profiles_dir, platform, account)

    async def browser(self) -> Browser:
        """The worker's Chromium, launched on first use (and again if it died)."""
        async with self._lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            self._contexts.clear()  # they died with the old browser
            try:
                self._browser = await launch_chromium(self._playwright, headless=self.headless)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise Transient(f"cannot start Chromium ({CHROMIUM}): {first}") from exc
            log.info("Chromium %s started", self._browser.version)
            return self._browser

    async def context(self, platform: str, account: str) -> BrowserContext:
        """The account's context; made again from the profile when a person logged in since
        (`postroom browser-login` rewrote the file) and no page of the old one is open."""
        browser = await self.browser()
        async with self._lock:
            key = (platform, account)
            profile = self.profile(platform, account)
            context = self._contexts.get(key)
            stamp = _stamp(profile)
            if context is not None and stamp != self._stamps.get(key) and not context.pages:
                log.info("%s:%s: the profile was logged in again; reloading it", *key)
                await context.close()
                context = None
            if context is None:
                context = await open_context(browser, profile)
                self._contexts[key] = context
                self._stamps[key] = stamp
            return context

    async def save(self, platform: str, account: str) -> None:
        """Write the context's state back, unless the file changed since it was read (a new
        login: it wins, and the context is made again from it at its next use)."""
        key = (platform, account)
        context = self._contexts.get(key)
        profile = self.profile(platform, account)
        if context is None or _stamp(profile) != self._stamps.get(key):
            return
        await save_state(context, profile)
        self._stamps[key] = _stamp(profile)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for (platform, account), context in list(self._contexts.items()):
                try:
                    await self.save(platform, account)
                    await context.close()
                except Exception:
                    log.warning("closing the context of %s:%s failed", platform, account)
            self._contexts.clear()
            if self._browser is not None:
                try:
                    await self._browser.close()
                except Exception:
                    log.warning("closing Chromium failed", exc_info=True)
                self._browser = None
            if self._playwright is not None:
                await self._playwright.stop()
                self._playwright = None

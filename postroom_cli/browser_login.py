"""`postroom browser-login`: a person logs a browser account in, once, in its own profile.

    postroom browser-login --platform P --account A --accounts FILE [--profiles-dir DIR]
        [--headless] [--remote-debugging-port PORT] [--timeout-s 300]

Opens the account's playbook `login_url` in Chromium (a window: run it where there is a
display), with the account's saved profile, and waits until the playbook's logged-in probe
passes, on the page the person is on or on `check_url` (looked at every few seconds in a tab of
its own). Then it saves the profile (cookies and localStorage, mode 0600) where the worker reads
it. Two-factor and challenge pages are the person's to answer; this never fills them.

Without a display: `--headless --remote-debugging-port PORT` and connect a browser's DevTools to
it (over an SSH tunnel: `ssh -L PORT:127.0.0.1:PORT host`, then chrome://inspect), or a
Playwright script with `connect_over_cdp` (the tests do).

Exit status: 0 logged in (profile saved), 3 not logged in within --timeout-s, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import anyio
from playwright.async_api import BrowserContext, async_playwright

from worker.accounts import AccountConfig, AccountsError
from worker.browser.engine import NoSteps, PageRun
from worker.browser.host import (
    DEFAULT_PROFILES_DIR,
    BrowserAccount,
    browser_account,
    launch_chromium,
    open_context,
    profile_dir,
    save_state,
)
from worker.browser.playbook import fill_template

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_LOGGED_IN = 3
_POLL_S = 0.5
_SIDE_CHECK_EVERY_S = 5.0
_SIDE_CHECK_TIMEOUT_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="postroom browser-login",
        description="Log a browser account in, in its worker profile (opens Chromium).",
    )
    p.add_argument("--platform", required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--accounts", required=True, type=Path, metavar="FILE")
    p.add_argument("--profiles-dir", type=Path, default=DEFAULT_PROFILES_DIR, metavar="DIR")
    p.add_argument("--headless", action="store_true", help="no window (use with a debugging port)")
    p.add_argument(
        "--remote-debugging-port",
        type=int,
        metavar="PORT",
        help="serve Chrome DevTools on 127.0.0.1:PORT (log in through it from elsewhere)",
    )
    p.add_argument("--timeout-s", type=float, default=300.0, metavar="S")
    return p


def find_account(path: Path, platform: str, account: str) -> BrowserAccount:
    """The browser account from the worker's accounts file. Only this entry is read: the
    other accounts' credential references need not resolve here."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AccountsError(f"cannot read accounts file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AccountsError(f"accounts file {path} is not valid TOML: {exc}") from None
    for entry in data.get("account", []):
        if not isinstance(entry, dict):
            continue
        if str(entry.get("platform", "")).lower() == platform and entry.get("account") == account:
            if "playbook" not in entry:
                raise AccountsError(
                    f"{path}: account {platform}:{account} has no playbook: it is not a browser "
                    "account"
                )
            options = {k: v for k, v in entry.items() if k not in ("platform", "account")}
            config = AccountConfig(
                platform=platform,
                account=account,
                base_url=str(entry.get("base_url", "")).rstrip("/"),
                credentials={},
                options={k: v for k, v in options.items() if isinstance(v, str | int | float)},
            )
            return browser_account(config, relative_to=path.parent)
    raise AccountsError(
        f"{path}: no [[account]] with platform {platform!r} and account {account!r}"
    )


async def login(args: argparse.Namespace, account: BrowserAccount) -> int:
    profile = profile_dir(args.profiles_dir, account.platform, account.account)
    extra = []
    if args.remote_debugging_port:
        extra = [f"--remote-debugging-port={args.remote_debugging_port}"]
    async with async_playwright() as playwright:
        try:
            browser = await launch_chromium(playwright, headless=args.headless, extra_args=extra)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(
                f"postroom browser-login: cannot start Chromium: {first}\n"
                "no display? use --headless --remote-debugging-port PORT",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            context = await open_context(browser, profile)
            page = await context.new_page()
            run = PageRun(page, account, NoSteps())
            await page.goto(fill_template(account.playbook.login.login_url, account.values()))
            if args.remote_debugging_port:
                print(f"remote debugging on http://127.0.0.1:{args.remote_debugging_port}")
            print(f"log in to {account.label} in the browser; waiting up to {args.timeout_s:g}s")
            sys.stdout.flush()
            if await _wait_logged_in(run, context, account, args.timeout_s):
                await save_state(context, profile)
                print(f"logged in: {account.label} (profile {profile})")
                return EXIT_OK
            print(
                f"postroom browser-login: {account.label} not logged in after {args.timeout_s:g}s",
                file=sys.stderr,
            )
            return EXIT_NOT_LOGGED_IN
        finally:
            await browser.close()


async def _wait_logged_in(
    run: PageRun, context: BrowserContext, account: BrowserAccount, timeout_s: float
) -> bool:
    probe = account.playbook.login.logged_in
    said_challenge = False
    next_side_check = anyio.current_time() + _SIDE_CHECK_EVERY_S
    with anyio.move_on_after(timeout_s):
        while True:
            if await run.all_signals(probe):
                return True
            if not said_challenge and await run.any_signal(account.playbook.login.challenge):
                print("a challenge page is shown (2FA, captcha): answer it in the browser")
                said_challenge = True
            if anyio.current_time() >= next_side_check:
                if await _check_in_side_tab(context, account):
                    return True
                next_side_check = anyio.current_time() + _SIDE_CHECK_EVERY_S
            await anyio.sleep(_POLL_S)
    return False


async def _check_in_side_tab(context: BrowserContext, account: BrowserAccount) -> bool:
    """The person may be on a page without the logged-in marks: look at check_url aside."""
    page = await context.new_page()
    try:
        url = fill_template(account.playbook.login.check_url, account.values())
        with anyio.move_on_after(_SIDE_CHECK_TIMEOUT_S):
            await page.goto(url)
            return await PageRun(page, account, NoSteps()).all_signals(
                account.playbook.login.logged_in
            )
        return False
    except Exception:
        return False
    finally:
        await page.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        account = find_account(args.accounts, args.platform.lower(), args.account)
    except AccountsError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return anyio.run(login, args, account)


if __name__ == "__main__":
    sys.exit(main())

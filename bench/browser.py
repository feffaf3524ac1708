"""Item 7: browser workers — Chromium start, one publish on the sandbox composer, memory per
open context.

    python -m bench.browser [--publishes 20] [--contexts 5]      (alone; or bench.run --only 7)

- Chromium start: `chromium.launch` of Debian's /usr/bin/chromium with the worker's flags, to a
  connected browser (the Playwright driver already running, as in a worker): median of 5.
- One publish: what a browser worker spends on one job on the sandbox's X-like composer
  (`postroom sandbox`, /web/x, playbook sandbox-x), through the worker's own adapter: open a page
  in the account's context, open the composer, fill it, click Post, the CreateTweet answer, the
  toast, the permalink, close the page and save the profile. Coordinator round trips are not in
  it (items 1-2 measure those). p50 and p99 (nearest rank: of 20 that is the slowest) of N.
- Memory per open context: the proportional set size (PSS, so pages shared between Chromium's
  processes count once) of the whole Chromium process tree with N accounts' contexts each
  holding an open composer page, minus the same with none, divided by N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
from playwright.async_api import Browser, async_playwright

from bench.common import Context, Figure, quantile, say
from postroom_cli.cluster import LocalCluster
from worker.adapters.base import JobSpec
from worker.browser.adapter import BrowserAdapter
from worker.browser.engine import NoSteps
from worker.browser.host import BrowserAccount, BrowserHost, launch_chromium
from worker.browser.playbook import load_playbook

STARTS = 5
PUBLISHES = 20
CONTEXTS = 5


async def chromium_start_ms() -> list[float]:
    times: list[float] = []
    async with async_playwright() as playwright:
        for _ in range(STARTS):
            t0 = time.perf_counter()
            browser = await launch_chromium(playwright)
            times.append((time.perf_counter() - t0) * 1000)
            await browser.close()
    return times


async def log_in(host: BrowserHost, account: BrowserAccount) -> None:
    """The sandbox's X login takes any username and a non-empty password."""
    context = await host.context(account.platform, account.account)
    page = await context.new_page()
    await page.goto(f"{account.base_url}/i/flow/login")
    await page.fill("#username", account.account)
    await page.fill("#password", "bench")
    await page.click("[data-testid=LoginForm_Login_Button]")
    await page.wait_for_url("**/home")
    await page.close()


def accounts(base_url: str, n: int) -> list[BrowserAccount]:
    playbook = load_playbook("sandbox-x")
    return [
        BrowserAccount(platform="x", account=f"bench{i}", base_url=base_url, playbook=playbook)
        for i in range(n)
    ]


async def publish_ms(base_url: str, profiles: Path, n: int) -> list[float]:
    [account] = accounts(base_url, 1)
    host = BrowserHost([account], profiles_dir=profiles)
    try:
        await log_in(host, account)
        times: list[float] = []
        for i in range(n + 1):  # the first warms the context up and is not counted
            spec = JobSpec(
                job_id=f"bench-{i}",
                platform="x",
                account=account.account,
                text=f"bench post {i} at {time.time():.6f}",
            )
            t0 = time.perf_counter()
            adapter = BrowserAdapter(host, "x")
            adapter.bind_steps(NoSteps(commit_bound_s=10.0))
            try:
                await adapter.commit(spec, await adapter.prepare(spec))
            finally:
                await adapter.close()
            if i:
                times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        await host.aclose()


async def context_memory_mib(base_url: str, profiles: Path, n: int) -> dict[str, float]:
    group = accounts(base_url, n)
    host = BrowserHost(group, profiles_dir=profiles)
    try:
        browser = await host.browser()
        base = chromium_pss_kib(browser)
        for account in group:
            await log_in(host, account)
            context = await host.context(account.platform, account.account)
            page = await context.new_page()
            await page.goto(f"{account.base_url}/compose/post")
        loaded = chromium_pss_kib(browser)
        return {
            "browser_alone_mib": round(base / 1024, 1),
            "with_contexts_mib": round(loaded / 1024, 1),
            "per_context_mib": round((loaded - base) / 1024 / n, 1),
        }
    finally:
        await host.aclose()


def chromium_pss_kib(browser: Browser) -> int:
    """PSS of every Chromium process under this one (the driver's children and theirs)."""
    del browser  # Playwright does not say its browser's pid: walk our process tree
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if "chromium" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def measure(workdir: Path, publishes: int, contexts: int) -> dict[str, Any]:
    starts = anyio.run(chromium_start_ms)
    with LocalCluster(workdir) as cluster:
        sandbox = cluster.start_sandbox()
        base_url = f"{sandbox}/web/x"
        times = anyio.run(publish_ms, base_url, workdir / "profiles-publish", publishes)
        memory = anyio.run(context_memory_mib, base_url, workdir / "profiles-mem", contexts)
    return {
        "chromium_start_ms": round(statistics.median(starts), 1),
        "chromium_starts_ms": [round(t, 1) for t in starts],
        "publish_p50_ms": round(quantile(times, 0.5), 1),
        "publish_p99_ms": round(quantile(times, 0.99), 1),
        "publishes": len(times),
        "publish_times_ms": [round(t, 1) for t in times],
        "contexts": contexts,
        **memory,
    }


def run(ctx: Context) -> list[Figure]:
    publishes = 5 if ctx.quick else PUBLISHES
    contexts = 2 if ctx.quick else CONTEXTS
    start = Figure("7a", "chromium_start", "browser: Chromium start (launch to connected)", "ms")
    p50 = Figure(
        "7b",
        "browser_publish_p50",
        f"browser: one publish, sandbox composer, p50 of {publishes}",
        "ms",
        decimals=0,
    )
    p99 = Figure(
        "7c",
        "browser_publish_p99",
        f"browser: one publish, sandbox composer, p99 of {publishes}",
        "ms",
        decimals=0,
    )
    mem = Figure(
        "7d", "browser_context_mib", "browser: memory per open context (PSS, with a page)", "MiB"
    )
    for r in range(ctx.runs):
        res = measure(ctx.workdir(f"browser-{r}"), publishes, contexts)
        say(
            f"  item 7 run {r + 1}: start {res['chromium_start_ms']} ms, publish p50 "
            f"{res['publish_p50_ms']} ms p99 {res['publish_p99_ms']} ms, "
            f"{res['per_context_mib']} MiB per context"
        )
        start.add(res["chromium_start_ms"], res)
        p50.add(res["publish_p50_ms"])
        p99.add(res["publish_p99_ms"])
        mem.add(res["per_context_mib"])
    return [start, p50, p99, mem]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.browser", description=__doc__)
    p.add_argument("--publishes", type=int, default=PUBLISHES)
    p.add_argument("--contexts", type=int, default=CONTEXTS)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/postroom-bench-browser"))
    a = p.parse_args()
    print(json.dumps(measure(a.workdir, a.publishes, a.contexts), indent=2))


if __name__ == "__main__":
    main()

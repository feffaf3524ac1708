"""Item 8: the web console renders a page with 1,000 jobs on the server in under 200 ms.

    python -m bench.console [--runs 5]             (alone; or bench.run --only 8)

A coordinator process holds 20 posts of 50 targets each (1,000 queued jobs, no workers). The
console runs in this process (its ASGI app, no HTTP socket: the figure is the server's time, not
the browser's) and answers:

- 8a: GET /jobs?page_size=1000: one ListJobs of 1,000 jobs from the coordinator, one row each.
- 8b: GET /posts?page_size=20: the 20 posts with one row per target (1,000 rows).

Each is the median of N requests after one warm-up (templates compiled, channel connected).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.common import Context, Figure, say
from postroom_cli.cluster import LocalCluster
from postroom_console import ConsoleConfig, create_app

POSTS = 20
TARGETS_PER_POST = 50  # the coordinator's limit per post
REQUESTS = 20
TARGET_MS = 200.0
PAGES = {  # item: (key, path, what the page holds)
    "8a": ("console_jobs_page_ms", "/jobs?page_size=1000", "1,000 jobs"),
    "8b": ("console_posts_page_ms", f"/posts?page_size={POSTS}", "1,000 targets"),
}


def _populate(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        for n in range(POSTS):
            targets = [f"sandbox:bench-{n}-{t}" for t in range(TARGETS_PER_POST)]
            cluster.publish(client, f"console bench post {n}", targets)


async def _timed(get: Callable[[], Awaitable[httpx.Response]], rows: str) -> list[float]:
    first = await get()  # warm-up: templates compiled, channel open
    if first.status_code != 200 or first.text.count(rows) < 1:
        raise RuntimeError(f"the console answered {first.status_code}: {first.text[:300]}")
    times: list[float] = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        answer = await get()
        times.append((time.perf_counter() - t0) * 1000)
        answer.raise_for_status()
    return times


async def measure(address: str) -> dict[str, Any]:
    app = create_app(ConsoleConfig(coordinator=address, token=""))
    results: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as http:
            for item, (key, path, holds) in PAGES.items():
                times = await _timed(functools.partial(http.get, path), "<tr")
                page = (await http.get(path)).text
                results[item] = {
                    "key": key,
                    "path": path,
                    "p50_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                    "bytes": len(page),
                    "holds": holds,
                }
    return results


def run(ctx: Context) -> list[Figure]:
    figures = {
        item: Figure(
            item,
            key,
            f"console: GET {path}, server side ({holds})",
            "ms",
            "<=",
            TARGET_MS,
            "issue 16: a page with 1,000 jobs in < 200 ms",
        )
        for item, (key, path, holds) in PAGES.items()
    }
    with LocalCluster(ctx.workdir("console")) as cluster:
        cluster.start_coordinator()
        _populate(cluster)
        for r in range(ctx.runs):
            res = anyio.run(measure, cluster.coordinator_address)
            for item, fig in figures.items():
                say(f"  item {item} run {r + 1}: p50 {res[item]['p50_ms']} ms")
                fig.add(res[item]["p50_ms"], res[item])
    return list(figures.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(runs=a.runs, quick=False, workroot=a.workdir or Path(tmp))
        for fig in run(ctx):
            print(json.dumps({"item": fig.item, "key": fig.key, "median_ms": fig.median}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

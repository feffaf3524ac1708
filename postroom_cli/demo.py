"""`postroom demo`: the whole system on this machine, publishing a few posts with one rate limit.

Starts the sandbox, the coordinator (SQLite in a temporary directory) and two API workers as
separate processes, publishes posts to several sandbox accounts while the sandbox answers one
request with 429 + Retry-After, shows live progress, and exits 0 once every post is published
exactly once. Ctrl-C stops every child cleanly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, ClusterError, LocalCluster
from postroom_cli.render import error_class, job_status, post_status
from sandbox.admin import SandboxAdmin

# The field's scenario (facebook/instagram/x, Instagram rate-limited) plus a few more posts.
DEMO_POSTS: list[tuple[str, list[str]]] = [
    (
        "🎉 Big announcement coming tomorrow! Stay tuned. #ComingSoon #Innovation",
        ["sandbox:facebook-demo", "sandbox:instagram-demo", "sandbox:x-demo"],
    ),
    ("New blog post: how we never post twice.", ["sandbox:x-demo", "sandbox:linkedin-demo"]),
    ("Behind the scenes at postroom HQ 📸", ["sandbox:instagram-demo"]),
    (
        "Hiring! Come build publishing infrastructure with us.",
        ["sandbox:linkedin-demo", "sandbox:facebook-demo"],
    ),
]
RATE_LIMITED_ACCOUNT = "instagram-demo"
DEFAULT_RETRY_AFTER_S = 3.0
DEFAULT_TIMEOUT_S = 90.0
WORKERS = ("demo-worker-1", "demo-worker-2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postroom demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--retry-after",
        type=float,
        default=DEFAULT_RETRY_AFTER_S,
        help="seconds the injected 429 asks to wait (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="give up if not everything is published by then",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the database and logs here (default: a temporary directory)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave everything up after publishing, until Ctrl-C",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console = Console()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.workdir, console)
    with tempfile.TemporaryDirectory(prefix="postroom-demo-") as tmp:
        return _run(args, Path(tmp), console)


def _run(args: argparse.Namespace, workdir: Path, console: Console) -> int:
    started = time.monotonic()
    cluster = LocalCluster(workdir, ClusterConfig())
    try:
        with cluster:
            console.print(f"[bold]postroom demo[/] in {workdir}")
            sandbox_url = cluster.start_sandbox()
            console.print(f"  sandbox      {sandbox_url}")
            address = cluster.start_coordinator()
            console.print(f"  coordinator  {address}  db {cluster.db_url}")
            console.print(f"  metrics      {cluster.metrics_url}")
            for device_id in WORKERS:
                cluster.start_worker(device_id, concurrency=2)
            cluster.wait_online(WORKERS)
            console.print(f"  workers      {', '.join(WORKERS)} online")
            with SandboxAdmin(sandbox_url) as admin:
                admin.inject(
                    "rate_limit",
                    platform="sandbox",
                    account=RATE_LIMITED_ACCOUNT,
                    count=1,
                    retry_after_seconds=args.retry_after,
                )
                console.print(
                    f"  injected     one 429 (Retry-After {args.retry_after:g}s) for "
                    f"sandbox:{RATE_LIMITED_ACCOUNT}\n"
                )
                with cluster.client() as client:
                    post_ids = [
                        cluster.publish(client, text, targets) for text, targets in DEMO_POSTS
                    ]
                    ok = _follow(client, post_ids, console, args.timeout)
                    if ok:
                        _summary(
                            client,
                            admin,
                            post_ids,
                            cluster,
                            console,
                            started,
                            keep_running=args.keep_running,
                        )
                if not ok:
                    console.print("[red]not everything was published in time[/]")
                    children = [cluster.sandbox, cluster.coordinator, *cluster.workers.values()]
                    for child in children:
                        if child is not None:
                            console.print(f"--- {child.name} ({child.log_path}):")
                            console.print(child.log_tail(15), markup=False, highlight=False)
                    return 1
                if args.keep_running:
                    console.print("everything is still running; press Ctrl-C to stop")
                    while True:
                        time.sleep(3600)
            return 0
    except KeyboardInterrupt:
        console.print("\ninterrupted: stopping workers, coordinator and sandbox")
        return 130
    except ClusterError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1


def _follow(
    client: PublishingClient, post_ids: list[str], console: Console, timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            posts = [client.get_post(pid) for pid in post_ids]
            live.update(_progress(posts))
            if all(p.status == pb.POST_STATUS_PUBLISHED for p in posts):
                return True
            if time.monotonic() > deadline or any(
                p.status in (pb.POST_STATUS_FAILED, pb.POST_STATUS_CANCELLED) for p in posts
            ):
                return False
            time.sleep(0.25)


def _progress(posts: list[pb.Post]) -> Group:
    counts: Counter[str] = Counter()
    table = Table(title="posts", title_justify="left")
    for col in ("post", "status", "targets"):
        table.add_column(col)
    for post in posts:
        cells = []
        for ts in post.target_states:
            status = job_status(ts.job_status)
            counts[status] += 1
            extra = f" (attempt {ts.attempt})" if ts.attempt > 1 else ""
            if ts.last_error and status == "QUEUED":
                extra += f" waiting: {error_class(ts.last_error_class)}"
            cells.append(f"{ts.target.account}={status}{extra}")
        table.add_row(post.id, post_status(post.status), ", ".join(cells))
    jobs = Table(title="jobs by status", title_justify="left")
    names = ["QUEUED", "CLAIMED", "RUNNING", "SUCCEEDED", "FAILED", "NEEDS_LOGIN"]
    for name in names:
        jobs.add_column(name, justify="right")
    jobs.add_row(*[str(counts.get(n, 0)) for n in names])
    return Group(jobs, table)


def _summary(
    client: PublishingClient,
    admin: SandboxAdmin,
    post_ids: list[str],
    cluster: LocalCluster,
    console: Console,
    started: float,
    *,
    keep_running: bool,
) -> None:
    jobs = [j for pid in post_ids for j in client.list_jobs(pub.ListJobsRequest(post_id=pid)).jobs]
    attempts = sum(j.attempt for j in jobs)
    retried = [j for j in jobs if j.attempt > 1]
    accepted = admin.posts()
    duplicates = admin.duplicates()
    console.print(
        f"\n[bold green]published[/] {len(post_ids)} posts to {len(jobs)} targets in "
        f"{time.monotonic() - started:.1f}s ({attempts} attempts)"
    )
    for job in retried:
        console.print(
            f"  {job.platform}:{job.account} was rate limited, then published on "
            f"attempt {job.attempt}: {job.result_url}"
        )
    console.print(f"  the sandbox accepted {len(accepted)} posts; duplicates: {len(duplicates)}")
    console.print(f"  metrics at {cluster.metrics_url}")
    example = retried[0].id if retried else (jobs[0].id if jobs else "JOB_ID")
    console.print(
        f"  try: postroom --coordinator {cluster.coordinator_address} job show {example}"
        + ("" if keep_running else "   (while it runs: postroom demo --keep-running)"),
        markup=False,
    )

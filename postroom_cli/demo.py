"""`postroom demo`: the whole system on this machine, publishing a few posts with one rate limit.

Starts the sandbox, the coordinator (SQLite in a temporary directory, or the database of `--db`;
on PostgreSQL two coordinators, an active one and a standby) and two API workers as separate
processes, publishes posts to several sandbox accounts while the sandbox answers one request with
429 + Retry-After, shows live progress, and exits 0 once every post is published exactly once.
Ctrl-C stops every child cleanly.

`--platforms bluesky,mastodon` runs the same flow against real platform software started
locally (the Bluesky reference PDS, mastodon-mock): the workers get an accounts file, Mastodon
answers one post with its own 429, and the posts are counted on the platforms themselves.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from coordinator.store.postgres import redacted
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.accountsfile import render_accounts
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import Child, ClusterConfig, ClusterError, LocalCluster
from postroom_cli.demo_platforms import DEMO_ACCOUNT, REAL_PLATFORMS, LocalPlatforms, missing
from postroom_cli.render import error_class, fmt_target, job_status, post_status
from sandbox.admin import SandboxAdmin
from sandbox.local import LocalServerError

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


REAL_DEMO_POSTS: list[tuple[str, list[str]]] = [
    ("Hello from postroom 👋 https://example.org #postroom", ["bluesky:demo", "mastodon:demo"]),
    ("Never posts twice, even when a worker dies mid-post. #reliability", ["mastodon:demo"]),
    ("A Bluesky post with a link: https://atproto.com #atproto", ["bluesky:demo"]),
]
PLATFORM_CHOICES = ("sandbox", *REAL_PLATFORMS)


def _platforms(value: str) -> list[str]:
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PLATFORM_CHOICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown platform(s) {unknown or value!r}; choose from {', '.join(PLATFORM_CHOICES)}"
        )
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postroom demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--platforms",
        type=_platforms,
        default=["sandbox"],
        metavar="P,P",
        help="sandbox (default), or real software run locally: bluesky (the reference PDS, "
        "after `make pds`), mastodon (mastodon-mock); e.g. bluesky,mastodon",
    )
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
        "--db",
        metavar="URL",
        help="the coordinator's database, empty (the demo enrolls its own workers): "
        "postgresql://USER@HOST/DB (two coordinators on it, an active one and a standby) or "
        "sqlite:///PATH; default SQLite in the work directory",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave everything up after publishing, until Ctrl-C",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console = Console()
    # The children run in sessions of their own: SIGTERM, like Ctrl-C, must stop them through
    # the cluster's clean shutdown, not leave them behind.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.workdir, console)
    with tempfile.TemporaryDirectory(prefix="postroom-demo-") as tmp:
        return _run(args, Path(tmp), console)


def _run(args: argparse.Namespace, workdir: Path, console: Console) -> int:
    started = time.monotonic()
    real = [p for p in args.platforms if p in REAL_PLATFORMS]
    problems = missing(real)
    if problems:
        console.print("[red]cannot run the demo on " + ", ".join(real) + ":[/]")
        for problem in problems:
            console.print(f"  {problem}", markup=False)
        return 2
    # Authentication on, as a deployment runs: the cluster makes its admin token, an approver
    # (four eyes), enrolls each worker for its accounts and gives the sandbox an admin token.
    cluster = LocalCluster(workdir, ClusterConfig(auth=True))
    if args.db:
        cluster.db_url = args.db
    try:
        with cluster, LocalPlatforms(workdir / "platforms", real) as platforms:
            console.print(f"[bold]postroom demo[/] in {workdir}")
            admin = _start(args, cluster, platforms, workdir, console)
            posts = [*(DEMO_POSTS if "sandbox" in args.platforms else [])]
            posts += [
                (text, t) for text, t in REAL_DEMO_POSTS if set(t) <= set(platforms.targets())
            ]
            with cluster.client() as client:
                post_ids = [cluster.publish(client, text, targets) for text, targets in posts]
                ok = _follow(client, post_ids, console, args.timeout)
                if ok:
                    ok = _summary(
                        client,
                        admin,
                        platforms,
                        post_ids,
                        cluster,
                        console,
                        started,
                        keep_running=args.keep_running,
                    )
            if admin is not None:
                admin.close()
            if not ok:
                _show_logs(cluster, console)
                return 1
            if args.keep_running:
                console.print("everything is still running; press Ctrl-C to stop")
                while True:
                    time.sleep(3600)
            return 0
    except LocalServerError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("\ninterrupted: stopping workers, coordinator and sandbox")
        return 130
    except ClusterError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1


def _show_logs(cluster: LocalCluster, console: Console) -> None:
    console.print("[red]not everything was published exactly once in time[/]")
    peers: list[Child | None] = [peer.child for peer in cluster.peers.values()]
    children = [cluster.sandbox, *(peers or [cluster.coordinator]), *cluster.workers.values()]
    for child in children:
        if child is not None:
            console.print(f"--- {child.name} ({child.log_path}):")
            console.print(child.log_tail(15), markup=False, highlight=False)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _start(
    args: argparse.Namespace,
    cluster: LocalCluster,
    platforms: LocalPlatforms,
    workdir: Path,
    console: Console,
) -> SandboxAdmin | None:
    """Everything up, one 429 injected; the sandbox's admin client when the sandbox runs."""
    sandboxed = "sandbox" in args.platforms
    if sandboxed:
        console.print(f"  sandbox      {cluster.start_sandbox()}")
    for platform, url in platforms.urls.items():
        console.print(f"  {platform:<12} {url}  (local, account {DEMO_ACCOUNT})")
    if cluster.db_url.startswith(("postgresql:", "postgres:")):
        _start_two_coordinators(cluster, console)
    else:
        address = cluster.start_coordinator()
        console.print(f"  coordinator  {address}  db {redacted(cluster.db_url)}", highlight=False)
    console.print(f"  metrics      {cluster.metrics_url}")
    if cluster.access is not None:
        console.print(
            f"  security     operator and device tokens required; admin token in "
            f"{cluster.access.admin_token_file}",
            highlight=False,
        )
    accounts: Path | None = None
    env: dict[str, str] = {}
    if platforms.accounts():
        text, env = render_accounts(platforms.accounts())
        accounts = workdir / "accounts.toml"
        accounts.write_text(text)
        console.print(f"  accounts     {accounts} (credentials in the workers' environment)")
    for device_id in WORKERS:
        cluster.start_worker(
            device_id,
            platforms=("sandbox",) if sandboxed else (),
            concurrency=2,
            accounts=accounts,
            env=env,
        )
    cluster.wait_online(WORKERS)
    enrolled = " (each enrolled for its accounts)" if cluster.access is not None else ""
    console.print(f"  workers      {', '.join(WORKERS)} online{enrolled}")
    # The web console, single-user as the admin (a demo on loopback): nobody has to sign in.
    token_file = cluster.access.admin_token_file if cluster.access is not None else None
    console.print(f"  web console  {cluster.start_console(token_file=token_file)}/  (as admin)")
    admin = None
    if sandboxed:
        admin = cluster.sandbox_admin()
        admin.inject(
            "rate_limit",
            platform="sandbox",
            account=RATE_LIMITED_ACCOUNT,
            count=1,
            retry_after_seconds=args.retry_after,
        )
        console.print(
            f"  injected     one 429 (Retry-After {args.retry_after:g}s) for "
            f"sandbox:{RATE_LIMITED_ACCOUNT}"
        )
    limited = platforms.inject_rate_limit(args.retry_after)
    if limited is not None:
        console.print(
            f"  injected     one 429 (X-RateLimit-Reset in {args.retry_after:g}s) for {limited}"
        )
    console.print()
    return admin


def _start_two_coordinators(cluster: LocalCluster, console: Console) -> None:
    """PostgreSQL: an active coordinator and a standby on the one database. Workers get both
    addresses; the demo's own calls (and the web console's) go to the standby, which forwards
    them to the active one, as an operator may call any coordinator."""
    cluster.start_coordinators(2)
    active = cluster.wait_active()
    for peer in cluster.peers.values():
        role = "active" if peer is active else "standby (takes over if the active one dies)"
        console.print(f"  coordinator  {peer.name} {peer.address}  {role}", highlight=False)
    standby = next(peer for peer in cluster.peers.values() if peer is not active)
    cluster.coordinator_address = standby.address
    cluster.metrics_url = active.metrics_url
    console.print(
        f"               two coordinators on PostgreSQL (db {redacted(cluster.db_url)}); the "
        f"workers are given both addresses, and this demo calls the standby {standby.name}, "
        "which forwards to the active one",
        highlight=False,
    )


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
            # Sandbox accounts are named after the platform they stand for; others need it.
            name = ts.target.account if ts.target.platform == "sandbox" else fmt_target(ts.target)
            cells.append(f"{name}={status}{extra}")
        table.add_row(post.id, post_status(post.status), ", ".join(cells))
    jobs = Table(title="jobs by status", title_justify="left")
    names = ["QUEUED", "CLAIMED", "RUNNING", "SUCCEEDED", "FAILED", "NEEDS_LOGIN"]
    for name in names:
        jobs.add_column(name, justify="right")
    jobs.add_row(*[str(counts.get(n, 0)) for n in names])
    return Group(jobs, table)


def _summary(
    client: PublishingClient,
    admin: SandboxAdmin | None,
    platforms: LocalPlatforms,
    post_ids: list[str],
    cluster: LocalCluster,
    console: Console,
    started: float,
    *,
    keep_running: bool,
) -> bool:
    """What happened, counted where the posts landed; False if any target got two posts."""
    jobs = [j for pid in post_ids for j in client.list_jobs(pub.ListJobsRequest(post_id=pid)).jobs]
    attempts = sum(j.attempt for j in jobs)
    retried = [j for j in jobs if j.attempt > 1]
    console.print(
        f"\n[bold green]published[/] {len(post_ids)} posts to {len(jobs)} targets in "
        f"{time.monotonic() - started:.1f}s ({attempts} attempts)"
    )
    for job in retried:
        console.print(
            f"  {job.platform}:{job.account} was rate limited, then published on "
            f"attempt {job.attempt}: {job.result_url}",
            highlight=False,
        )
    exact = True
    if admin is not None:
        accepted, duplicates = admin.posts(), admin.duplicates()
        console.print(
            f"  the sandbox accepted {len(accepted)} posts; duplicates: {len(duplicates)}"
        )
        exact = not duplicates
    expected: dict[str, int] = {}
    for job in jobs:
        target = f"{job.platform}:{job.account}"
        expected[target] = expected.get(target, 0) + 1
    for target, found in platforms.posts_on_platform().items():
        # Counted on the platform itself: exactly one post per job, nothing twice.
        published = expected.get(target, 0)
        console.print(f"  {target} holds {found} posts; postroom published {published}")
        exact = exact and found == published
    console.print(f"  metrics at {cluster.metrics_url}")
    example = retried[0].id if retried else (jobs[0].id if jobs else "JOB_ID")
    token = f" --token-file {cluster.access.admin_token_file}" if cluster.access is not None else ""
    console.print(
        f"  try: postroom --coordinator {cluster.coordinator_address}{token} job show {example}"
        + ("" if keep_running else "   (while it runs: postroom demo --keep-running)"),
        markup=False,
    )
    return exact

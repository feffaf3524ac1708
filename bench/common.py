"""Shared parts of `make bench`: figures and their statistics, machine facts, child processes,
coordinator set-up, posts in bulk, and /proc sampling.

Every process a benchmark starts is tracked here and stopped by its PID (never by name).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import math
import os
import platform
import queue
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom_cli.cluster import ClusterConfig, LocalCluster

REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# The product's defaults (coordinator/leasing/core.py): heartbeat 5 s, lease TTL 15 s.
PRODUCT_HEARTBEAT_S = 5.0
PRODUCT_LEASE_TTL_S = 15.0

Op = Literal[">=", "<=", ""]


# ---- figures ------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (q in [0, 1]) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


@dataclass(slots=True)
class Figure:
    """One measured quantity: a value per run, the target, and what each run saw."""

    item: str  # "1", "1b", "3a", ...
    key: str
    name: str
    unit: str
    op: Op = ""
    target: float | None = None
    target_note: str = ""
    decimals: int = 1
    values: list[float] = field(default_factory=list)
    loads: list[tuple[float, float, float]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""

    def add(self, value: float, details: dict[str, Any] | None = None) -> None:
        self.values.append(value)
        self.loads.append(load_average())
        self.details.append(details or {})

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def passed(self) -> bool | None:
        m = self.median
        if m is None or self.target is None or not self.op:
            return None
        return m >= self.target if self.op == ">=" else m <= self.target

    def miss_by(self) -> str:
        """How far the median is from the target, when it misses."""
        m = self.median
        if self.passed is not False or m is None or self.target is None:
            return ""
        if self.op == ">=":
            short = self.target - m
            if m <= 0:
                return "nothing measured"
            below = short / self.target
            return (
                f"{self.fmt(short)} {self.unit} short ({below:.0%} below; x{self.target / m:.1f})"
            )
        over = m - self.target
        return f"{self.fmt(over)} {self.unit} over (x{m / self.target:.1f} the target)"

    def fmt(self, v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v:,.{self.decimals}f}"

    def target_text(self) -> str:
        if not self.op or self.target is None:
            return self.target_note or "-"
        text = f"{self.op} {self.fmt(self.target)} {self.unit}"
        return f"{text} ({self.target_note})" if self.target_note else text

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["median"] = self.median
        d["min"] = min(self.values) if self.values else None
        d["max"] = max(self.values) if self.values else None
        d["runs"] = len(self.values)
        d["passed"] = self.passed
        d["miss_by"] = self.miss_by()
        return d


# ---- machine facts ------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    dirty = [
        line.split(maxsplit=1)[-1]
        for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
    ]
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mib": mem_kib // 1024,
        "sqlite": sqlite3.sqlite_version,
        "grpcio": grpc.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "git_dirty_files": dirty,
        # The code under test is the working tree: this names its uncommitted state.
        "git_diff_sha256": hashlib.sha256(
            _git("diff", "HEAD", "--", "coordinator", "worker", "postroom_cli", "sandbox").encode()
        ).hexdigest()[:16],
    }


def uptime_line() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return f"load average: {load_average()}"


# ---- /proc sampling -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


class CpuMeter:
    """CPU time of some processes over a window: % of one core each."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = time.monotonic()
        self._c0 = {name: self._cpu(pid) for name, pid in pids.items()}

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            return cpu_seconds(pid)
        except (OSError, ValueError):
            return math.nan

    def percent(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t0
        return {
            name: round(100 * (self._cpu(pid) - self._c0[name]) / elapsed, 1)
            for name, pid in self.pids.items()
        }


# ---- child processes ----------------------------------------------------------------------


class ChildProcess:
    """A child in its own session: stdout lines queued for the parent, stderr to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
                text=True,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, prefix: str, timeout_s: float = 30.0) -> str:
        """The next stdout line starting with `prefix` (earlier other lines are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.name}: no {prefix!r} line in {timeout_s:g}s; {self.tail()}"
                )
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    raise RuntimeError(
                        f"{self.name} exited with {self.popen.returncode}: {self.tail()}"
                    ) from None
                continue
            if line.startswith(prefix):
                return line

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGCONT + SIGTERM, then SIGKILL if it lingers; by PID."""
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        self.popen.wait()
        self._reader.join(timeout=2)


class Children:
    """Every child a benchmark run starts; all stopped by PID on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[ChildProcess] = []

    def spawn(self, name: str, argv: list[str]) -> ChildProcess:
        child = ChildProcess(name, argv, self.workdir / f"{name}.log")
        self.procs.append(child)
        return child

    def wire(self, name: str, *args: str) -> ChildProcess:
        """A `python -m bench.wire` child (lean protocol sessions)."""
        return self.spawn(name, [sys.executable, "-m", "bench.wire", *args])

    def stop_all(self) -> None:
        for child in reversed(self.procs):
            child.stop()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def cluster(
    workdir: Path,
    *,
    heartbeat_s: float = PRODUCT_HEARTBEAT_S,
    lease_ttl_s: float = PRODUCT_LEASE_TTL_S,
    sandbox: bool = False,
    coordinator_args: Sequence[str] = (),
    db_url: str | None = None,
) -> Iterator[LocalCluster]:
    """A coordinator (and the sandbox if asked) as child processes, on SQLite in `workdir`
    unless `db_url` names another database."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = ClusterConfig(
        heartbeat_interval_s=heartbeat_s,
        lease_ttl_s=lease_ttl_s,
        coordinator_args=("--log-level", "WARNING", *coordinator_args),
    )
    with LocalCluster(workdir, config) as c:
        c.db_url = db_url or c.db_url
        if sandbox:
            c.start_sandbox()
        else:
            c.sandbox_url = "http://127.0.0.1:9"  # never called by lean sessions / --noop workers
        c.start_coordinator()
        yield c


def coordinator_pid(c: LocalCluster) -> int:
    assert c.coordinator is not None
    return c.coordinator.pid


def count_jobs(db_url: str, status: str) -> int:
    """Jobs in a status, read straight from the SQLite file (a WAL reader: the coordinator pays
    nothing for it, unlike a scrape or an API call)."""
    path = db_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT count(*) FROM jobs WHERE status = ?", (status,)).fetchone()
    finally:
        conn.close()
    return int(row[0])


def metric_value(metrics_url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a Prometheus series' samples whose labels include `labels`."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m is None:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(2))
    return total


# ---- posts in bulk --------------------------------------------------------------------------


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")


class Publisher:
    """Creates, approves and schedules posts concurrently over one grpc.aio channel."""

    def __init__(self, address: str, concurrency: int = 16) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = publishing_pb2_grpc.PublishingStub(self.channel)
        self.concurrency = concurrency

    async def close(self) -> None:
        await self.channel.close(None)

    async def _each(self, n: int, fn: Callable[[int], Any]) -> list[Any]:
        out: list[Any] = [None] * n
        sem = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> None:
            async with sem:
                out[i] = await fn(i)

        await asyncio.gather(*(one(i) for i in range(n)))
        return out

    async def approved_posts(
        self, n: int, targets: Sequence[str], text: str = "bench"
    ) -> list[str]:
        """n posts in APPROVED, each to `targets` ("platform:account")."""
        tg = [pb.Target(platform=t.split(":")[0], account=t.split(":", 1)[1]) for t in targets]

        async def make(i: int) -> str:
            post = await self.stub.CreatePost(
                pub.CreatePostRequest(text=f"{text} {i}", targets=tg, actor="bench")
            )
            await self.stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id, actor="bench"))
            await self.stub.ApprovePost(
                pub.ApprovePostRequest(
                    post_id=post.id, actor="bench", content_hash=post.content_hash
                )
            )
            return str(post.id)

        return await self._each(n, make)

    async def schedule(self, post_ids: Sequence[str], at: Callable[[int], float | None]) -> None:
        async def one(i: int) -> None:
            when = at(i)
            await self.stub.SchedulePost(
                pub.SchedulePostRequest(
                    post_id=post_ids[i], actor="bench", scheduled_at=rfc3339(when) if when else ""
                )
            )

        await self._each(len(post_ids), one)

    async def audit_times(self, action: str) -> list[float]:
        """`at` of every audit event with this action, in seq order."""
        times: list[float] = []
        after = 0
        while True:
            page = await self.stub.ListAuditEvents(
                pub.ListAuditEventsRequest(action=action, after_seq=after, page_size=10_000)
            )
            times.extend(e.at.seconds + e.at.nanos / 1e9 for e in page.events)
            if not page.next_after_seq:
                return times
            after = page.next_after_seq


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout_s:g}s")
        time.sleep(poll_s)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- what a benchmark item is given -------------------------------------------------------


@dataclass(slots=True)
class Context:
    runs: int
    quick: bool
    workroot: Path
    profile: bool = False
    profile_dir: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)  # extra sections for the JSON

    def workdir(self, name: str) -> Path:
        path = self.workroot / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def worker_has_noop() -> bool:
    """Whether the real worker has its no-op adapter flag yet."""
    try:
        return "--noop" in (REPO_ROOT / "worker" / "main.py").read_text()
    except OSError:
        return False

"""Sampling the coordinator with py-spy while a benchmark runs, and summing up where time goes.

py-spy attaches to the running process by PID (no change to how it is started) and samples every
thread; `raw` output is one collapsed stack per line: `thread (TID): NAME;frame;frame... COUNT`,
idle threads left out. The summary gives, per thread, how busy it was, and the top functions by
self time (the innermost frame) and by inclusive time (anywhere on the stack).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

RATE_HZ = 200


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Recorder:
    """`py-spy record` on a PID until stop(); our own child, stopped by its PID."""

    def __init__(self, pid: int, out: Path, rate_hz: int = RATE_HZ) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out = out
        self.rate_hz = rate_hz
        self._log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in stop()
        argv = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--nolineno",
            "--threads",
            "-o",
            str(out),
        ]
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        time.sleep(0.3)  # let it attach before the measured window opens
        self.seconds = 0.0

    def stop(self) -> None:
        self.seconds = time.monotonic() - self.started
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


# Where an event-loop sample goes: the first rule whose needle is on the stack (leaf first for
# the "leaf" rules). Order matters: the store's work inside the actor's flush counts as store.
CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("leaf", "EpollSelector.select", "idle: waiting in epoll"),
    ("stack", "SqliteStore.", "store: rows -> params (json), aiosqlite hand-offs"),
    ("stack", "Coordinator._observe", "tracing spans + metrics"),
    ("stack", "Coordinator._notify_watchers", "watchers"),
    ("stack", "Coordinator._refresh_gauges", "gauge refresh (timer)"),
    ("stack", "LeaseCore.", "lease core: transitions, dispatch, audits"),
    ("stack", "CoreBase.", "lease core: transitions, dispatch, audits"),
    ("stack", "AttemptOutcomes.", "lease core: transitions, dispatch, audits"),
    ("stack", "PostBook.", "lease core: transitions, dispatch, audits"),
    ("stack", "ReadyQueue.", "lease core: transitions, dispatch, audits"),
    ("stack", "Coordinator._timer", "actor timer"),
    ("stack", "Coordinator.", "actor loop: batching, Effects, outbox sends"),
    ("stack", "WorkerGatewayService.", "gateway: read WorkerMessage, post to mailbox, yield"),
    ("leaf", "Handle._run", "C code run by the loop (grpc aio cython, protobuf)"),
)
OTHER = "asyncio / anyio scheduling and the rest"


def categorize(frames: list[str]) -> str:
    leaf = frames[-1] if frames else ""
    for where, needle, name in CATEGORIES:
        if where == "leaf" and leaf.startswith(needle):
            return name
        if where == "stack" and any(f.startswith(needle) for f in frames):
            return name
    return OTHER


def _short(frame: str) -> str:
    """'Coordinator._flush (coordinator/actor.py)' stays; long paths lose their site-packages."""
    return frame.replace("site-packages/", "")


def summarize(raw: Path, seconds: float, rate_hz: int = RATE_HZ, top: int = 40) -> dict[str, Any]:
    """Busy share per thread; top functions by self and inclusive samples (main thread and all)."""
    threads: Counter[str] = Counter()
    self_all: Counter[str] = Counter()
    incl_all: Counter[str] = Counter()
    self_main: Counter[str] = Counter()
    incl_main: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, _, rest = stack.partition(": ")
        frames = rest.split(";")
        name = frames[0] if frames else head
        frames = [_short(f) for f in frames[1:]]
        thread = name if name != "MainThread" else "MainThread (event loop)"
        threads[thread] += count
        total += count
        if not frames:
            continue
        self_all[frames[-1]] += count
        for f in set(frames):
            incl_all[f] += count
        if name == "MainThread":
            cats[categorize(frames)] += count
            self_main[frames[-1]] += count
            for f in set(frames):
                incl_main[f] += count
    possible = max(1.0, seconds * rate_hz)
    main = threads.get("MainThread (event loop)", 0)

    def table(counter: Counter[str], base: int) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": n, "share": round(n / base, 3) if base else 0.0}
            for f, n in counter.most_common(top)
        ]

    return {
        "seconds": round(seconds, 2),
        "rate_hz": rate_hz,
        "samples": total,
        "threads_busy": {t: round(n / possible, 3) for t, n in threads.most_common()},
        "main_thread_categories": {c: round(n / main, 3) for c, n in cats.most_common()}
        if main
        else {},
        "main_thread_self": table(self_main, main),
        "main_thread_inclusive": table(incl_main, main),
        "all_threads_self": table(self_all, total),
        "all_threads_inclusive": table(incl_all, total),
    }


def render(summary: dict[str, Any], top: int = 12) -> str:
    lines = [
        f"py-spy {summary['rate_hz']} Hz over {summary['seconds']}s, {summary['samples']} "
        "non-idle samples",
        "busy (share of wall time): "
        + ", ".join(f"{t} {v:.0%}" for t, v in summary["threads_busy"].items()),
        "event-loop thread by category (share of its samples):",
    ]
    lines += [f"  {v:6.1%}  {c}" for c, v in summary["main_thread_categories"].items()]
    lines.append("event-loop thread, self time:")
    lines += [f"  {r['share']:6.1%}  {r['function']}" for r in summary["main_thread_self"][:top]]
    lines.append("event-loop thread, inclusive (frames on every stack left out):")
    lines += [
        f"  {r['share']:6.1%}  {r['function']}"
        for r in [r for r in summary["main_thread_inclusive"] if r["share"] < 0.99][:top]
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    print(render(summarize(path, secs)))

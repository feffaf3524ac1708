"""Item 4: scale of sessions. 1,000 simulated worker sessions from 4 processes (each session on
its own channel, i.e. its own TCP connection, as separate workers are), each heartbeating every
5 s (the product default; lease TTL 15 s) with a random phase. Over a 60 s window after all are
connected: the coordinator's CPU (utime + stime from /proc, % of one core) and its RSS (VmRSS at
the end, VmHWM peak). Connecting is not in the window.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import (
    Children,
    Context,
    CpuMeter,
    Figure,
    cluster,
    coordinator_pid,
    rss_mib,
    say,
)
from postroom.v1 import types_pb2 as pb

PROCESSES = 4


def one_run(workdir: Path, sessions: int, window_s: float) -> dict[str, Any]:
    per_proc = sessions // PROCESSES
    with cluster(workdir) as c, Children(workdir) as kids:
        pid = coordinator_pid(c)
        rss_before, _ = rss_mib(pid)
        procs = [
            kids.wire(
                f"idle{i}",
                "idle",
                "--address",
                c.coordinator_address,
                "--prefix",
                f"sim{i}-",
                "--sessions",
                str(per_proc),
            )
            for i in range(PROCESSES)
        ]
        connect_started = time.monotonic()
        for p in procs:
            p.wait_line("ready", timeout_s=180)
        connect_s = time.monotonic() - connect_started
        time.sleep(2.0)  # the Hello burst's commits and first dispatch rounds settle
        meter = CpuMeter({"coordinator": pid, **{p.name: p.pid for p in procs}})
        rss_samples: list[float] = []
        t_end = time.monotonic() + window_s
        while time.monotonic() < t_end:
            time.sleep(min(1.0, max(0.0, t_end - time.monotonic())))
            rss_samples.append(rss_mib(pid)[0])
        cpu = meter.percent()
        rss_end, hwm = rss_mib(pid)
        with c.client() as client:
            devices = client.list_devices().devices
        online = sum(d.state == pb.DEVICE_STATE_ONLINE for d in devices)
        return {
            "sessions": per_proc * PROCESSES,
            "processes": PROCESSES,
            "heartbeat_s": 5.0,
            "window_s": window_s,
            "connect_s": round(connect_s, 2),
            "online_at_end": online,
            "coordinator_cpu_percent": cpu["coordinator"],
            "client_cpu_percent": {k: v for k, v in cpu.items() if k != "coordinator"},
            "rss_mib_start": round(rss_before, 1),
            "rss_mib_end": round(rss_end, 1),
            "rss_mib_max_sampled": round(max(rss_samples), 1),
            "rss_mib_hwm": round(hwm, 1),
        }


def run(ctx: Context) -> list[Figure]:
    sessions, window = (200, 10.0) if ctx.quick else (1000, 60.0)
    cpu = Figure(
        "4",
        "sessions_cpu",
        f"{sessions} sessions heartbeating every 5 s: coordinator CPU",
        "% of a core",
        "<=",
        10.0,
        decimals=1,
    )
    rss = Figure(
        "4",
        "sessions_rss",
        f"{sessions} sessions: coordinator RSS (peak, VmHWM)",
        "MiB",
        "<=",
        300.0,
        decimals=0,
    )
    for r in range(ctx.runs):
        res = one_run(ctx.workdir(f"sessions-{r}"), sessions, window)
        say(
            f"  item 4 run {r + 1}: cpu {res['coordinator_cpu_percent']}%, rss hwm "
            f"{res['rss_mib_hwm']} MiB, online {res['online_at_end']}/{res['sessions']}"
        )
        cpu.add(res["coordinator_cpu_percent"], res)
        rss.add(res["rss_mib_hwm"], res)
        if res["online_at_end"] != res["sessions"]:
            cpu.notes.append(f"run {r + 1}: {res['online_at_end']}/{res['sessions']} online at end")
    return [cpu, rss]

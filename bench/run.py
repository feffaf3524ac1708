"""`make bench`: the performance figures of the issue, on this machine, as a table and as JSON.

    python -m bench.run [--out FILE] [--quick] [--only 1,2,...] [--runs K] [--no-profile]

Items (each in its own module; SQLite, coordinator and workers as separate processes):
  1  end-to-end throughput, 4 worker processes            bench/throughput.py
  2  dispatch latency, jobs due at 200/s, idle workers    bench/dispatch.py
  3  recovery after SIGKILL / SIGSTOP of a worker         bench/recovery.py
  4  1,000 heartbeating sessions: coordinator CPU, RSS    bench/sessions.py
  5  1 MiB screenshot, worker -> stored asset              bench/screenshot.py
  6  SQLite store alone: lease + complete transitions/s   bench/store_bench.py
  7  browser: Chromium start, one publish on the sandbox composer (p50/p99 of 20), memory
     per open context                                     bench/browser.py
  8  web console: a page of 1,000 jobs, server side       bench/console.py
  9  PostgreSQL vs SQLite, and 2 and 3 coordinators on one PostgreSQL: drain, dispatch
     p99, restart, takeover of a SIGKILLed active coordinator   bench/postgres.py
 10  enqueue, 1 client, sequential: 4 calls, 1 call, batches of 100   bench/enqueue.py
 11  real worker SIGKILLed after its commit permit, defaults   bench/recovery_permit.py
 12  placement "spread" on PostgreSQL: drain with 1, 2 and 3 coordinators, a third joining
     two (shares handed over, dispatch delay meanwhile), one of three SIGKILLed (its shards
     taken, the first of their jobs dispatched by a survivor)   bench/coordinators.py

Each figure is the median of K runs (default 3) with min and max; `--quick` is one run at smaller
sizes (a smoke run, not a measurement). With py-spy installed, item 1 gets one extra profiled run
(not counted) and the coordinator's hot spots go into the JSON under "profiles". Other work on
the machine skews every figure: the load average is recorded with each run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from bench import (
    browser,
    coordinators,
    dispatch,
    enqueue,
    postgres,
    recovery,
    recovery_permit,
    screenshot,
    sessions,
    store_bench,
    throughput,
)
from bench import console as web_console
from bench.common import Context, Figure, load_average, machine_info, say, uptime_line
from bench.peers import write_results
from bench.profile import py_spy

STORE_FLOOR = 2 * throughput.TARGET_JOBS_PER_S


def store_item(ctx: Context) -> list[Figure]:
    """Item 6: the SQLite store alone, claim + complete batches of 100 (bench/store_bench.py)."""
    n_jobs = 2000 if ctx.quick else 5000
    fig = Figure(
        "6",
        "store_transitions",
        "SQLite store alone: lease + complete transitions (batches of 100)",
        "transitions/s",
        ">=",
        STORE_FLOOR,
        "floor for item 1: 2 x 3,000 jobs/s",
        decimals=0,
    )
    for r in range(ctx.runs):
        path = ctx.workdir(f"store-{r}") / "bench.db"
        res = anyio.run(store_bench.measure_store, path, n_jobs, 100)
        say(f"  item 6 run {r + 1}: {res['transitions_per_s']} transitions/s")
        fig.add(float(res["transitions_per_s"]), res)
    return [fig]


ITEMS: dict[int, tuple[str, Callable[[Context], list[Figure]]]] = {
    1: ("throughput", throughput.run),
    2: ("dispatch latency", dispatch.run),
    3: ("recovery", recovery.run),
    4: ("sessions", sessions.run),
    5: ("screenshot", screenshot.run),
    6: ("store", store_item),
    7: ("browser", browser.run),
    8: ("console", web_console.run),
    9: ("PostgreSQL", postgres.run),
    10: ("enqueue", enqueue.run),
    11: ("recovery after the permit", recovery_permit.run),
    12: ("placement spread", coordinators.run),
}


def table(figures: list[Figure]) -> Table:
    t = Table(title="postroom bench (median of runs; spread = min .. max)", show_lines=False)
    for col, justify in (
        ("#", "left"),
        ("measure", "left"),
        ("median", "right"),
        ("spread", "right"),
        ("unit", "left"),
        ("target", "left"),
        ("result", "left"),
        ("load 1m", "right"),
        ("runs", "right"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for f in figures:
        if f.error:
            t.add_row(
                f.item, f.name, "-", "-", f.unit, f.target_text(), "[red]ERROR[/red]", "-", "0"
            )
            continue
        verdict = {True: "[green]pass[/green]", False: f"[red]MISS[/red] {f.miss_by()}", None: "-"}[
            f.passed
        ]
        loads = [ld[0] for ld in f.loads]
        spread = f"{f.fmt(min(f.values))} .. {f.fmt(max(f.values))}" if f.values else "-"
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
        t.add_row(
            f.item,
            f.name,
            f.fmt(f.median),
            spread,
            f.unit,
            f.target_text(),
            verdict,
            load,
            str(len(f.values)),
        )
    return t


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="one run, small sizes (smoke run)")
    p.add_argument("--only", default="", help="comma-separated item numbers, e.g. 5,6")
    p.add_argument("--runs", type=int, default=None, help="runs per item (default 3; 1 if --quick)")
    p.add_argument("--no-profile", action="store_true", help="skip item 1's profiled run")
    p.add_argument("--workdir", type=Path, default=None, help="keep logs and databases here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    selected = sorted({int(x) for x in a.only.split(",") if x.strip()} or ITEMS)
    unknown = [i for i in selected if i not in ITEMS]
    if unknown:
        p.error(f"unknown items {unknown}; known: {sorted(ITEMS)}")
    runs = a.runs if a.runs is not None else (1 if a.quick else 3)
    profile = not a.no_profile and 1 in selected and py_spy() is not None
    if not a.no_profile and 1 in selected and not profile:
        say("py-spy not installed: item 1 is not profiled (pip install py-spy)")

    started = time.time()
    load_start = load_average()
    say(
        f"bench: items {selected}, {runs} run(s) each{' (quick)' if a.quick else ''}; "
        f"{uptime_line()}"
    )
    with tempfile.TemporaryDirectory(prefix="postroom-bench-") as tmp:
        # Raw py-spy output stays in the work directory (kept only with --workdir); the JSON
        # gets the summaries.
        ctx = Context(
            runs=runs,
            quick=a.quick,
            workroot=a.workdir or Path(tmp),
            profile=profile,
            profile_dir=a.workdir,
        )
        figures, errors = _run_items(selected, ctx)
    _print(figures, ctx)
    if a.out is not None:
        doc: dict[str, Any] = {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1),
            "command": " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)]),
            "quick": a.quick,
            "runs": runs,
            "machine": machine_info(),
            "load_average": {"start": load_start, "end": load_average()},
            "items": [f.to_json() for f in figures],
            "errors": errors,
            **ctx.results,
        }
        write_results(a.out, doc)
        say(f"wrote {a.out}")
    return 1 if errors else 0


def _run_items(selected: list[int], ctx: Context) -> tuple[list[Figure], dict[str, str]]:
    """Each selected item in turn; one that fails is an ERROR row, the others still run."""
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    for item in selected:
        name, fn = ITEMS[item]
        say(f"item {item}: {name} ({uptime_line()})")
        t0 = time.monotonic()
        try:
            figures += fn(ctx)
        except Exception as exc:
            errors[str(item)] = traceback.format_exc()
            say(f"item {item} failed: {exc!r}")
            failed = Figure(str(item), f"item{item}", f"{name} (failed)", "")
            failed.error = repr(exc)
            figures.append(failed)
        say(f"item {item} took {time.monotonic() - t0:.0f} s")
    return figures, errors


def _print(figures: list[Figure], ctx: Context) -> None:
    console = Console(width=200)
    console.print(table(figures))
    for f in figures:
        for note in f.notes:
            console.print(f"note, item {f.item}: {note}")
    profiles = ctx.results.get("profiles", {})
    if profiles:
        from bench.profile import render

        for key, prof in profiles.items():
            console.print(
                f"\n[bold]coordinator profile, {key}[/bold] ({prof['run']['jobs_per_s']}"
                " jobs/s under py-spy)\n" + render(prof)
            )


if __name__ == "__main__":
    sys.exit(main())

"""The peer benchmark's ratios, kept as history in bench/results.json.

`make bench-peers` runs ../shared/bench-peers/run.sh (postroom against Celery, arq and
procrastinate in one run on this machine) and then

    python -m bench.peers fold bench/peers-results.json [--results bench/results.json]

which reads the harness's JSON, takes each system's median over the repetitions, and appends
one entry to the `peer_runs` list of bench/results.json: the medians, postroom's ratios to the
best peer of the same run (issue 13's targets: drain >= 2x, dispatch p99 <= 1x, enqueue >= 1x)
and the crash re-run times. `make bench` rewrites the rest of that file and keeps `peer_runs`
(`write_results`). A `--quick` harness run is a smoke run: it is not folded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

POSTROOM = "postroom"
HISTORY_KEY = "peer_runs"
# Harness field -> our name; "higher" says which way is better.
MEASURES: dict[str, tuple[str, bool]] = {
    "tput_drain": ("drain_jobs_per_s", True),
    "lat_p50_ms": ("dispatch_p50_ms", False),
    "lat_p99_ms": ("dispatch_p99_ms", False),
    "enqueue_per_s": ("enqueue_per_s", True),
}


def _median(values: Iterable[object]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return round(statistics.median(numbers), 2) if numbers else None


def medians(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per system, the median of each measure over its repetitions (the warm-up, rep -1, left
    out)."""
    by_peer: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("rep", 0) >= 0:
            by_peer.setdefault(str(row["peer"]), []).append(row)
    return {
        peer: {ours: _median(r.get(field) for r in reps) for field, (ours, _) in MEASURES.items()}
        for peer, reps in by_peer.items()
    }


def ratios(table: Mapping[str, Mapping[str, float | None]]) -> dict[str, Any]:
    """postroom against the best other system, measure by measure: (postroom / best, best's
    name). A ratio above 1 is better for throughput and enqueue, below 1 for latency."""
    out: dict[str, Any] = {}
    ours = table.get(POSTROOM, {})
    for ours_name, higher in MEASURES.values():
        scored = [
            (value, peer)
            for peer, row in table.items()
            if peer != POSTROOM and (value := row.get(ours_name)) is not None
        ]
        mine = ours.get(ours_name)
        if not scored or mine is None:
            continue
        best_value, best_peer = max(scored) if higher else min(scored)
        out[ours_name] = {
            "postroom": mine,
            "best_peer": best_peer,
            "best": best_value,
            "ratio": round(mine / best_value, 3) if best_value else None,
        }
    return out


def crash_summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per crash variant: median seconds until the job ran again, and the side effect's runs."""
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(str(row["peer"]), []).append(row)
    return {
        name: {
            "recovery_s": _median(r.get("recovery_s") for r in reps),
            "executions": sorted({int(r["executions"]) for r in reps if "executions" in r}),
        }
        for name, reps in by_variant.items()
    }


def summarize(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One history entry from the harness's results.json."""
    table = medians(doc.get("throughput_latency", []))
    machine = doc.get("machine", {})
    return {
        "started": doc.get("started"),
        "finished": doc.get("finished"),
        "reps": doc.get("args", {}).get("reps"),
        "jobs": doc.get("args", {}).get("n"),
        "machine": machine,
        "versions": doc.get("versions", {}),
        "medians": table,
        "ratios": ratios(table),
        "crash": crash_summary(doc.get("crash", [])),
    }


def write_results(path: Path, doc: dict[str, Any]) -> None:
    """Write bench/results.json, carrying the peer runs' history over from the file there."""
    if HISTORY_KEY not in doc and path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
        if isinstance(previous, dict) and HISTORY_KEY in previous:
            doc = {**doc, HISTORY_KEY: previous[HISTORY_KEY]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def fold(peer_json: Path, results: Path) -> dict[str, Any] | None:
    """Append the run's summary to `results`' history; None (and nothing written) for a quick
    run."""
    doc = json.loads(peer_json.read_text())
    if doc.get("args", {}).get("quick"):
        return None
    entry = summarize(doc)
    current: dict[str, Any] = json.loads(results.read_text()) if results.exists() else {}
    history = [e for e in current.get(HISTORY_KEY, []) if e.get("started") != entry["started"]]
    current[HISTORY_KEY] = [*history, entry]
    write_results(results, current)
    return entry


def render(entry: Mapping[str, Any]) -> str:
    lines = [f"peer run {entry['started']} .. {entry['finished']} ({entry['reps']} reps)"]
    for name, r in entry["ratios"].items():
        lines.append(
            f"  {name}: postroom {r['postroom']:g}, best peer {r['best_peer']} {r['best']:g}"
            f" -> {r['ratio']:g}x"
        )
    for name, c in entry["crash"].items():
        runs = c["executions"]
        lines.append(f"  crash {name}: re-run after {c['recovery_s']} s, side effect ran {runs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fold", help="add a peer run's ratios to bench/results.json's history")
    f.add_argument("peer_json", type=Path, help="the harness's --json output")
    f.add_argument("--results", type=Path, default=Path("bench/results.json"))
    a = p.parse_args(argv)
    try:
        entry = fold(a.peer_json, a.results)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench.peers: cannot fold {a.peer_json}: {exc}", file=sys.stderr)
        return 1
    if entry is None:
        print(f"{a.peer_json} is a --quick run (a smoke run): not added to {a.results}")
        return 0
    print(render(entry))
    print(f"added to {a.results} ({HISTORY_KEY})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

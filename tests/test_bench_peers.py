"""`python -m bench.peers fold`: a peer run's ratios join bench/results.json's history, and
`make bench` rewriting that file keeps them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.peers import HISTORY_KEY, write_results

REPO = Path(__file__).resolve().parent.parent


def _row(peer: str, rep: int, drain: float | None, p99: float, enqueue: float) -> dict[str, Any]:
    return {
        "peer": peer,
        "rep": rep,
        "tput_drain": drain,
        "lat_p50_ms": p99 / 3,
        "lat_p99_ms": p99,
        "enqueue_per_s": enqueue,
    }


def _harness_json(path: Path, started: str, *, quick: bool = False) -> Path:
    rows = [
        # postroom: medians 500 jobs/s, p99 9 ms, 130 enqueues/s (rep -1, the warm-up, not counted)
        _row("postroom", -1, 1.0, 999.0, 1.0),
        _row("postroom", 0, 450.0, 9.0, 120.0),
        _row("postroom", 1, 500.0, 10.0, 130.0),
        _row("postroom", 2, 520.0, 8.0, 140.0),
        # celery drains fastest with the lowest p99; arq enqueues fastest
        _row("celery-pf4", 0, 2000.0, 3.0, 2000.0),
        _row("celery-pf4", 1, 1900.0, 2.0, 2100.0),
        _row("arq", 0, 900.0, 40.0, 2600.0),
        _row("arq", 1, None, 50.0, 2800.0),  # a drain that hit its cap
    ]
    crash = [
        {"peer": "postroom-permit", "recovery_s": 15.5, "executions": 1},
        {"peer": "postroom-permit", "recovery_s": 16.5, "executions": 1},
        {"peer": "celery-pf1-vt60", "recovery_s": 61.0, "executions": 2},
    ]
    doc = {
        "args": {"quick": quick, "reps": 3, "n": 5000},
        "machine": {"cpus": 2},
        "versions": {},
        "started": started,
        "finished": started,
        "throughput_latency": rows,
        "crash": crash,
    }
    path.write_text(json.dumps(doc))
    return path


def _fold(peer_json: Path, results: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.peers", "fold", str(peer_json), "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_peer_run_adds_its_ratios_to_the_history_and_a_bench_rewrite_keeps_them(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"items": ["from make bench"]}))
    first = _fold(_harness_json(tmp_path / "a.json", "2026-11-29 10:00:00"), results)
    assert first.returncode == 0, first.stderr
    assert "drain_jobs_per_s: postroom 500, best peer celery-pf4 1950 -> 0.256x" in first.stdout
    _fold(_harness_json(tmp_path / "b.json", "2026-11-30 10:00:00"), results)

    doc = json.loads(results.read_text())
    assert doc["items"] == ["from make bench"]  # the bench's own items untouched
    runs = doc[HISTORY_KEY]
    assert [r["started"] for r in runs] == ["2026-11-29 10:00:00", "2026-11-30 10:00:00"]
    ratios = runs[0]["ratios"]
    assert ratios["dispatch_p99_ms"]["best_peer"] == "celery-pf4"
    assert ratios["dispatch_p99_ms"]["ratio"] == 3.6  # 9 / 2.5: above 1 is worse for latency
    assert ratios["enqueue_per_s"]["best_peer"] == "arq"
    assert ratios["enqueue_per_s"]["ratio"] == 0.048  # 130 / 2700
    assert runs[0]["crash"]["postroom-permit"] == {"recovery_s": 16.0, "executions": [1]}

    # `make bench` writes its new figures; the peer history stays.
    write_results(results, {"items": ["a newer bench"]})
    doc = json.loads(results.read_text())
    assert doc["items"] == ["a newer bench"]
    assert len(doc[HISTORY_KEY]) == 2


def test_folding_the_same_run_twice_keeps_one_entry_and_a_quick_run_is_not_kept(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results.json"
    run = _harness_json(tmp_path / "a.json", "2026-11-29 10:00:00")
    _fold(run, results)
    _fold(run, results)
    assert len(json.loads(results.read_text())[HISTORY_KEY]) == 1

    quick = _fold(_harness_json(tmp_path / "q.json", "2026-11-29 11:00:00", quick=True), results)
    assert quick.returncode == 0
    assert "smoke run" in quick.stdout
    assert len(json.loads(results.read_text())[HISTORY_KEY]) == 1


def test_a_file_that_is_not_the_harness_output_is_refused_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    proc = _fold(bad, tmp_path / "results.json")
    assert proc.returncode == 1
    assert f"cannot fold {bad}" in proc.stderr
    assert not (tmp_path / "results.json").exists()

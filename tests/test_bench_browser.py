"""`python -m bench.browser` (item 7 of `make bench`) runs on the sandbox composer and prints its
figures: a Chromium start, publish times, memory per context."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_browser_bench_prints_its_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.browser", "--publishes", "2", "--contexts", "1"),
            *("--workdir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["publishes"] == 2 and len(figures["publish_times_ms"]) == 2
    assert 0 < figures["chromium_start_ms"] < 30_000
    assert 0 < figures["publish_p50_ms"] <= figures["publish_p99_ms"] < 60_000
    assert figures["per_context_mib"] > 1  # a context with a page costs real memory

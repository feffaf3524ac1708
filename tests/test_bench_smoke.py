"""`python -m bench.run --quick --only 5,6` runs and writes the JSON `make bench` promises.

No speed is asserted: the machine may be busy. Only the shape of the results is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIGURE_FIELDS = {
    "item",
    "key",
    "name",
    "unit",
    "op",
    "target",
    "values",
    "median",
    "min",
    "max",
    "runs",
    "passed",
    "miss_by",
    "loads",
    "details",
    "error",
}


@pytest.mark.timeout(300)
def test_quick_bench_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "5,6", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["runs"] == 1
    assert {"git_commit", "cpus", "python", "sqlite"} <= set(doc["machine"])
    assert len(doc["load_average"]["start"]) == 3
    assert doc["errors"] == {}
    items = {f["item"]: f for f in doc["items"]}
    assert set(items) == {"5", "6"}
    for fig in items.values():
        assert set(fig) >= FIGURE_FIELDS, FIGURE_FIELDS - set(fig)
        assert fig["runs"] == 1 and len(fig["values"]) == 1 and fig["error"] == ""
        assert fig["median"] > 0 and fig["min"] <= fig["median"] <= fig["max"]
        assert fig["op"] in (">=", "<=") and fig["target"] > 0
        assert isinstance(fig["passed"], bool)
        assert len(fig["loads"][0]) == 3
    assert items["5"]["unit"] == "ms"
    assert items["5"]["details"][0]["asset_files"] == items["5"]["details"][0]["uploads"]
    assert items["6"]["details"][0]["transitions"] == 2 * items["6"]["details"][0]["jobs"]
    assert "postroom bench" in proc.stdout  # the rich table

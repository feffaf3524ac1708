"""Shared readers for the shipped observability files: the Grafana dashboard, the Prometheus rules,
and the metric names the coordinator and worker really expose.

Used by tests/test_prometheus_rules.py, and by end-to-end tests that run every dashboard and
recording-rule expression against a real Prometheus scraping live processes. Dashboard expressions
contain no Grafana template variables, so they can be sent to Prometheus as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = REPO_ROOT / "dashboards" / "postroom.json"
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES_PATH = PROMETHEUS_DIR / "rules.yml"
RULES_TEST_PATH = PROMETHEUS_DIR / "rules_test.yml"
PROMETHEUS_CONFIG_PATH = PROMETHEUS_DIR / "prometheus.yml"

# Sample-name suffixes each metric type exposes (text format), as Prometheus will store them.
_TYPE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
    return data


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    """Every `targets[].expr` of the dashboard, in panel order."""
    return [
        str(target["expr"])
        for panel in iter_panels(load_dashboard())
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def load_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES_PATH.read_text())
    return data


def _rules() -> Iterator[dict[str, Any]]:
    for group in load_rules()["groups"]:
        yield from group["rules"]


def recording_rules() -> dict[str, str]:
    """Recording rule name -> expression."""
    return {str(r["record"]): str(r["expr"]) for r in _rules() if "record" in r}


def recording_rule_exprs() -> list[str]:
    """The expression of every recording rule, in file order."""
    return list(recording_rules().values())


def alert_rules() -> dict[str, dict[str, Any]]:
    """Alert name -> its rule (expr, for, labels, annotations)."""
    return {str(r["alert"]): r for r in _rules() if "alert" in r}


def alert_exprs() -> list[str]:
    return [str(r["expr"]) for r in alert_rules().values()]


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a small lexer, enough for our expressions:
    strings, label matchers, ranges and grouping clauses are dropped; a name followed by "(" is a
    function or aggregation)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name = match.group(0)
        if name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def defined_metric_names() -> set[str]:
    """Every sample name the coordinator and worker can expose (counters with `_total`,
    histograms as `_bucket`/`_sum`/`_count`), read from fresh instances of their metrics."""
    from coordinator.metrics import CoordinatorMetrics
    from worker.metrics import WorkerMetrics

    registry = CollectorRegistry()
    CoordinatorMetrics(registry)
    WorkerMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        for suffix in _TYPE_SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names

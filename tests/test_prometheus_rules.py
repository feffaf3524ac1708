"""The shipped Prometheus rules, example config and Grafana dashboard: valid for promtool, every
alert unit-tested, and every metric they read really exposed by the coordinator or a worker."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from obs_helpers import (
    PROMETHEUS_CONFIG_PATH,
    PROMETHEUS_DIR,
    RULES_PATH,
    RULES_TEST_PATH,
    alert_exprs,
    alert_rules,
    dashboard_exprs,
    defined_metric_names,
    iter_panels,
    load_dashboard,
    promql_metric_names,
    recording_rule_exprs,
    recording_rules,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; `make install`)"
)

REQUIRED_ALERTS = {
    "PostroomCoordinatorDown",
    "PostroomRateLimitGateClosedLong",
    "PostroomRetryStorm",
    "PostroomDevicesOffline",
    "PostroomJobsStuck",
    "PostroomCommitPermitDenied",
    "PostroomNeedsLoginWaiting",
}

# Series Prometheus writes itself for every scrape target, not exposed by postroom.
PROMETHEUS_SERIES = {"up"}


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES_PATH))


@needs_promtool
def test_promtool_accepts_the_example_config_and_its_rule_file() -> None:
    assert "SUCCESS: 1 rule files found" in promtool("check", "config", str(PROMETHEUS_CONFIG_PATH))


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULES_TEST_PATH))


@needs_promtool
def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    # promtool has no bare "parse this expression": wrap each one in a recording rule.
    rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path))


def test_alerts_have_for_severity_and_annotations() -> None:
    alerts = alert_rules()
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULES_TEST_PATH.read_text())["tests"]
    cases = [case for group in tests for case in group.get("alert_rule_test", [])]
    for name in alert_rules():
        own = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in own), f"{name}: no firing case"
        assert any(not case["exp_alerts"] for case in own), f"{name}: no quiet case"


def test_dashboard_is_importable() -> None:
    dash = load_dashboard()
    assert dash["uid"] == "postroom"
    assert dash["schemaVersion"] >= 36
    [var] = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert (var["type"], var["query"]) == ("datasource", "prometheus")
    panels = list(iter_panels(dash))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no target"
        for target in targets:
            assert isinstance(target["expr"], str) and target["expr"].strip(), panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]


def test_dashboard_expressions_run_on_prometheus_as_they_are() -> None:
    # End-to-end tests send them straight to Prometheus: no Grafana variables allowed.
    for expr in dashboard_exprs():
        assert "$" not in expr, expr


def test_dashboard_shows_what_operators_look_for() -> None:
    exprs = dashboard_exprs()
    joined = "\n".join(exprs)
    assert "sum by (status) (postroom_jobs)" in exprs
    for needle in (
        "postroom:jobs_succeeded:rate5m",
        "postroom:jobs:rate5m",
        "postroom:retries_scheduled:rate5m",
        "postroom:rate_limit_hits:rate5m",
        "postroom_rate_limit_gate_closed",
        "histogram_quantile(0.5, postroom:dispatch_latency_seconds_bucket:rate5m)",
        "histogram_quantile(0.99, postroom:dispatch_latency_seconds_bucket:rate5m)",
        "postroom:job_duration_seconds:p95",
        "postroom:lease_expirations:rate5m",
        'postroom:commit_permits:rate5m{result="denied"}',
        "postroom_devices_online",
        "postroom_needs_login_accounts",
    ):
        assert needle in joined, needle


def test_coordinator_down_alert_selects_the_shipped_scrape_job() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG_PATH.read_text())
    jobs = {str(sc["job_name"]) for sc in config["scrape_configs"]}
    expr = alert_rules()["PostroomCoordinatorDown"]["expr"]
    [job] = [j for j in jobs if f'job="{j}"' in expr]
    assert "coordinator" in job, (job, expr)


def test_every_metric_read_is_exposed_or_recorded() -> None:
    exposed = defined_metric_names()
    recorded = set(recording_rules())
    assert "postroom_jobs_total" in exposed and "postroom_jobs" in exposed
    for expr in dashboard_exprs() + recording_rule_exprs() + alert_exprs():
        names = promql_metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        unknown = names - exposed - recorded - PROMETHEUS_SERIES
        assert not unknown, f"{expr!r} reads {sorted(unknown)}, which nothing exposes or records"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (platform, le) (rate(x_bucket{a="b,c"}[5m]))', {"x_bucket"}),
        ("histogram_quantile(0.99, a:b:rate5m) > on () group_left (k) c", {"a:b:rate5m", "c"}),
        ("sum(increase(a_total[10m] offset 5m)) unless b == bool 1", {"a_total", "b"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names

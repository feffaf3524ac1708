"""The coordinator's and the worker's Prometheus metrics: the exact names and labels of design.md,
what each helper moves, and /metrics served over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import CoordinatorMetrics
from postroom.metrics_http import serve_metrics
from worker.metrics import WorkerMetrics

# Exposed metric name -> (type, label names), as design.md ("Observability names") fixes them,
# plus the gauges the dashboard and alerts need.
COORDINATOR_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "postroom_jobs_total": ("counter", frozenset({"platform", "outcome"})),
    "postroom_job_attempts_total": ("counter", frozenset({"platform"})),
    "postroom_retries_scheduled_total": ("counter", frozenset({"platform", "reason"})),
    "postroom_rate_limit_hits_total": ("counter", frozenset({"platform", "account"})),
    "postroom_rate_limit_gate_closed": ("gauge", frozenset({"platform", "account"})),
    "postroom_job_duration_seconds": ("histogram", frozenset({"platform", "outcome"})),
    "postroom_dispatch_latency_seconds": ("histogram", frozenset()),
    "postroom_jobs": ("gauge", frozenset({"status", "platform"})),
    "postroom_lease_expirations_total": ("counter", frozenset({"phase"})),
    "postroom_commit_permits_total": ("counter", frozenset({"result"})),
    "postroom_devices_online": ("gauge", frozenset({"kind"})),
    "postroom_needs_login_accounts": ("gauge", frozenset({"platform", "account"})),
}
WORKER_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "postroom_worker_step_duration_seconds": ("histogram", frozenset({"platform", "step"})),
    "postroom_worker_platform_requests_total": ("counter", frozenset({"platform", "status"})),
    "postroom_worker_jobs_in_flight": ("gauge", frozenset()),
    "postroom_worker_connected": ("gauge", frozenset()),
}


def exposed(registry: CollectorRegistry) -> dict[str, tuple[str, frozenset[str]]]:
    """Exposed name -> (type, label names) parsed back from the text exposition."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            name = family.name
            if family.type == "counter":
                name = sample.name  # the parser strips `_total` from the family name
            labels = frozenset(sample.labels) - {"le"}
            assert found.setdefault(name, (family.type, labels)) == (family.type, labels), name
    return found


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def cm(registry: CollectorRegistry) -> CoordinatorMetrics:
    return CoordinatorMetrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_coordinator_exposes_exactly_the_design_names_and_labels(
    registry: CollectorRegistry, cm: CoordinatorMetrics
) -> None:
    cm.job_attempt_started("x")
    cm.job_finished("x", "succeeded", 1.5)
    cm.retry_scheduled("x", "transient")
    cm.rate_limit_hit("x", "brand")
    cm.set_gate("x", "brand", closed=True)
    cm.set_job_counts({("QUEUED", "x"): 2})
    cm.lease_expired("running")
    cm.commit_permit(granted=False)
    cm.set_devices_online("api", 1)
    cm.dispatch_latency(0.002)
    cm.set_needs_login("x", "brand", waiting=True)
    assert exposed(registry) == COORDINATOR_METRICS


def test_worker_exposes_exactly_its_names_and_labels(registry: CollectorRegistry) -> None:
    wm = WorkerMetrics(registry)
    wm.observe_step("x", "publish", 0.3)
    wm.platform_request("x", 429)
    wm.set_jobs_in_flight(2)
    wm.set_connected(True)
    assert exposed(registry) == WORKER_METRICS


def test_coordinator_and_worker_share_one_registry_without_clashes(
    registry: CollectorRegistry,
) -> None:
    CoordinatorMetrics(registry)
    WorkerMetrics(registry)


def test_series_alerts_depend_on_exist_at_zero_from_start(
    registry: CollectorRegistry,
) -> None:
    CoordinatorMetrics(registry, platforms=["mastodon"])
    for phase in ("claimed", "running", "committed"):
        assert value(registry, "postroom_lease_expirations_total", phase=phase) == 0
    for result in ("granted", "denied"):
        assert value(registry, "postroom_commit_permits_total", result=result) == 0
    for kind in ("api", "browser"):
        assert value(registry, "postroom_devices_online", kind=kind) == 0
    assert value(registry, "postroom_jobs_total", platform="mastodon", outcome="succeeded") == 0
    assert value(registry, "postroom_job_attempts_total", platform="mastodon") == 0
    retries = "postroom_retries_scheduled_total"
    for reason in ("rate_limited", "transient", "lease_lost"):
        assert value(registry, retries, platform="mastodon", reason=reason) == 0


def test_per_account_and_per_status_series_exist_at_zero_once_known(
    registry: CollectorRegistry, cm: CoordinatorMetrics
) -> None:
    hits = "postroom_rate_limit_hits_total"
    assert value(registry, hits, platform="mastodon", account="acme") is None
    cm.account_known("mastodon", "acme")
    cm.account_known("mastodon", "*")  # "any account" is not an account
    assert value(registry, hits, platform="mastodon", account="acme") == 0
    assert (
        value(registry, "postroom_rate_limit_gate_closed", platform="mastodon", account="acme") == 0
    )
    assert (
        value(registry, "postroom_needs_login_accounts", platform="mastodon", account="acme") == 0
    )
    assert value(registry, hits, platform="mastodon", account="*") is None
    cm.rate_limit_hit("mastodon", "acme")
    cm.account_known("mastodon", "acme")  # later sightings never reset the count
    assert value(registry, hits, platform="mastodon", account="acme") == 1

    wm = WorkerMetrics(CollectorRegistry(), platforms=["mastodon"])
    requests = "postroom_worker_platform_requests_total"
    for status in ("429", "401", "503", "timeout"):
        assert (
            wm.registry.get_sample_value(requests, {"platform": "mastodon", "status": status}) == 0
        )


def test_job_finished_counts_the_outcome_and_times_it(
    registry: CollectorRegistry, cm: CoordinatorMetrics
) -> None:
    cm.job_attempt_started("bluesky")
    cm.job_attempt_started("bluesky")
    cm.job_finished("bluesky", "SUCCEEDED", 2.0)
    cm.job_finished("bluesky", "failed", 700.0)
    assert value(registry, "postroom_job_attempts_total", platform="bluesky") == 2
    assert value(registry, "postroom_jobs_total", platform="bluesky", outcome="succeeded") == 1
    assert value(registry, "postroom_jobs_total", platform="bluesky", outcome="failed") == 1
    ok = {"platform": "bluesky", "outcome": "succeeded"}
    assert value(registry, "postroom_job_duration_seconds_sum", **ok) == 2.0
    assert value(registry, "postroom_job_duration_seconds_bucket", le="1.0", **ok) == 0
    assert value(registry, "postroom_job_duration_seconds_bucket", le="2.5", **ok) == 1
    slow = {"platform": "bluesky", "outcome": "failed"}
    assert value(registry, "postroom_job_duration_seconds_bucket", le="600.0", **slow) == 0
    assert value(registry, "postroom_job_duration_seconds_bucket", le="1200.0", **slow) == 1


def test_retry_and_rate_limit_helpers(registry: CollectorRegistry, cm: CoordinatorMetrics) -> None:
    cm.retry_scheduled("x", "RATE_LIMITED")
    cm.retry_scheduled("x", "transient")
    cm.retry_scheduled("x", "transient")
    cm.rate_limit_hit("x", "brand")
    retries = "postroom_retries_scheduled_total"
    assert value(registry, retries, platform="x", reason="rate_limited") == 1
    assert value(registry, retries, platform="x", reason="transient") == 2
    assert value(registry, "postroom_rate_limit_hits_total", platform="x", account="brand") == 1

    cm.set_gate("x", "brand", closed=True)
    assert value(registry, "postroom_rate_limit_gate_closed", platform="x", account="brand") == 1
    cm.set_gate("x", "brand", closed=False)
    assert value(registry, "postroom_rate_limit_gate_closed", platform="x", account="brand") == 0


def test_set_job_counts_replaces_the_snapshot_and_zeroes_vanished_series(
    registry: CollectorRegistry, cm: CoordinatorMetrics
) -> None:
    cm.set_job_counts({("QUEUED", "x"): 3, ("RUNNING", "x"): 1, ("QUEUED", "bluesky"): 2})
    assert value(registry, "postroom_jobs", status="queued", platform="x") == 3
    assert value(registry, "postroom_jobs", status="running", platform="x") == 1

    cm.set_job_counts({("SUCCEEDED", "x"): 4, ("QUEUED", "bluesky"): 1})
    assert value(registry, "postroom_jobs", status="succeeded", platform="x") == 4
    assert value(registry, "postroom_jobs", status="queued", platform="bluesky") == 1
    assert value(registry, "postroom_jobs", status="queued", platform="x") == 0
    assert value(registry, "postroom_jobs", status="running", platform="x") == 0
    assert cm.job_count("QUEUED", "x") == 0
    assert cm.job_count("FAILED", "x") is None


def test_lease_permit_device_latency_and_login_helpers(
    registry: CollectorRegistry, cm: CoordinatorMetrics
) -> None:
    cm.lease_expired("committed")
    cm.commit_permit(granted=True)
    cm.commit_permit(granted=True)
    cm.commit_permit(granted=False)
    cm.set_devices_online("browser", 3)
    cm.dispatch_latency(0.0007)
    cm.set_needs_login("instagram", "brand", waiting=True)
    assert value(registry, "postroom_lease_expirations_total", phase="committed") == 1
    assert value(registry, "postroom_lease_expirations_total", phase="running") == 0
    assert value(registry, "postroom_commit_permits_total", result="granted") == 2
    assert value(registry, "postroom_commit_permits_total", result="denied") == 1
    assert value(registry, "postroom_devices_online", kind="browser") == 3
    assert value(registry, "postroom_dispatch_latency_seconds_bucket", le="0.0005") == 0
    assert value(registry, "postroom_dispatch_latency_seconds_bucket", le="0.001") == 1
    login = {"platform": "instagram", "account": "brand"}
    assert value(registry, "postroom_needs_login_accounts", **login) == 1
    cm.set_needs_login("instagram", "brand", waiting=False)
    assert value(registry, "postroom_needs_login_accounts", **login) == 0


def test_worker_helpers(registry: CollectorRegistry) -> None:
    wm = WorkerMetrics(registry)
    wm.platform_request("mastodon", 200)
    wm.platform_request("mastodon", 200)
    wm.platform_request("mastodon", "timeout")
    with pytest.raises(RuntimeError), wm.time_step("mastodon", "upload_media"):
        raise RuntimeError("the step failed")
    wm.set_jobs_in_flight(3)
    wm.set_connected(True)
    requests = "postroom_worker_platform_requests_total"
    assert value(registry, requests, platform="mastodon", status="200") == 2
    assert value(registry, requests, platform="mastodon", status="timeout") == 1
    step = {"platform": "mastodon", "step": "upload_media"}
    assert value(registry, "postroom_worker_step_duration_seconds_count", **step) == 1
    assert value(registry, "postroom_worker_jobs_in_flight") == 3
    assert value(registry, "postroom_worker_connected") == 1
    wm.set_connected(False)
    assert value(registry, "postroom_worker_connected") == 0


def test_coordinator_serves_metrics_over_http(
    registry: CollectorRegistry, cm: CoordinatorMetrics
) -> None:
    cm.job_finished("x", "succeeded", 1.0)
    cm.set_job_counts({("QUEUED", "x"): 5})
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        assert server.port > 0
        # Prometheus asks for OpenMetrics first; the classic text format must come back, where
        # postroom_jobs (gauge) and postroom_jobs_total (counter) can coexist.
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        resp = httpx.get(server.url, headers={"Accept": accept}, timeout=5)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {(f.name, f.type) for f in text_string_to_metric_families(resp.text)}
        assert ("postroom_jobs", "gauge") in families
        assert ("postroom_jobs", "counter") in families
        assert 'postroom_jobs{platform="x",status="queued"} 5.0' in resp.text
        assert "_created" not in resp.text
    finally:
        server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=5)


def test_worker_serves_metrics_over_http(registry: CollectorRegistry) -> None:
    WorkerMetrics(registry).set_connected(True)
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        resp = httpx.get(server.url, timeout=5)
        assert resp.status_code == 200
        assert "postroom_worker_connected 1.0" in resp.text
    finally:
        server.close()


@pytest.mark.anyio
async def test_metrics_server_closes_from_async_code(registry: CollectorRegistry) -> None:
    server = serve_metrics(registry, "127.0.0.1", 0)
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url, timeout=5)).status_code == 200
    await server.aclose()


def test_accounts_past_the_bound_share_one_series_and_never_add_more() -> None:
    """Account names come from clients: a flood of made-up accounts must not grow the metrics
    forever. Past the bound they are counted together under account="_other"."""
    registry = CollectorRegistry()
    cm = CoordinatorMetrics(registry, platforms=["x"], max_account_series=3)
    for n in range(10):
        cm.account_known("x", f"a{n}")
        cm.rate_limit_hit("x", f"a{n}")
    hits = "postroom_rate_limit_hits_total"
    assert [value(registry, hits, platform="x", account=f"a{n}") for n in range(4)] == [
        1,
        1,
        1,
        None,
    ]
    assert value(registry, hits, platform="x", account="_other") == 7
    # A shared gauge reads 1 while any of its accounts is on.
    gate = "postroom_rate_limit_gate_closed"
    cm.set_gate("x", "a5", closed=True)
    cm.set_gate("x", "a6", closed=False)
    assert value(registry, gate, platform="x", account="_other") == 1
    cm.set_gate("x", "a5", closed=False)
    assert value(registry, gate, platform="x", account="_other") == 0
    series = {
        s.labels["account"]
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if "account" in s.labels
    }
    assert series == {"a0", "a1", "a2", "_other"}

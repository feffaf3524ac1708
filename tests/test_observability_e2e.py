"""Observability end to end, against real processes (sandbox, coordinator, worker).

1. A real Prometheus scrapes the coordinator's and a worker's /metrics every second and evaluates
   the shipped rules (deploy/prometheus/rules.yml) every second. While the sandbox injects a 429,
   a 500 and a 401 and posts publish, the injected events must show up in Prometheus, and every
   expression of the shipped dashboard and recording rules must return a number: a panel that
   says "No data" while the system is busy is a broken panel. Stopping the coordinator then makes
   the coordinator-down alert pending, so its job label matches what the scrape config calls it.
2. One trace crosses the process boundary: an in-test OTLP/HTTP receiver collects the spans of
   both processes, and the worker's run span hangs under the coordinator's attempt span.

Every process is stopped by its PID; every wait polls against a deadline.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from obs_helpers import (
    PROMETHEUS_CONFIG_PATH,
    RULES_PATH,
    alert_rules,
    dashboard_exprs,
    recording_rule_exprs,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from polling import wait_until as poll_until

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import SandboxAdmin

T = TypeVar("T")

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)"
)

POLL_S = 0.2
PROMETHEUS_READY_TIMEOUT_S = 15.0
# Prometheus applies new scrape targets ~5 s after start, then scrapes every second.
FIRST_SCRAPE_TIMEOUT_S = 20.0
EVENTS_TIMEOUT_S = 15.0
PANELS_TIMEOUT_S = 25.0
SPANS_TIMEOUT_S = 20.0
ALERT_NAME_COORDINATOR_DOWN = "PostroomCoordinatorDown"

# Fast timings so a 429's retry and a 5xx's backoff happen within seconds.
CLUSTER_CONFIG = ClusterConfig(heartbeat_interval_s=1, lease_ttl_s=3, retry_initial_s=0.3)
RATE_LIMIT_RETRY_AFTER_S = 2.0


def wait_until(what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
    return poll_until(what, probe, timeout_s, poll_s=POLL_S)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def job_of(client: PublishingClient, post_id: str) -> pb.Job:
    [job] = client.list_jobs(pub.ListJobsRequest(post_id=post_id)).jobs
    return job


# ---- Prometheus -------------------------------------------------------------------------------


def shipped_job_names() -> tuple[str, str]:
    """(coordinator job, worker job) as deploy/prometheus/prometheus.yml names them: the alert
    rules select on these `job` labels, so the test scrapes under the same names."""
    config = yaml.safe_load(PROMETHEUS_CONFIG_PATH.read_text())
    names = [str(sc["job_name"]) for sc in config["scrape_configs"]]
    [coordinator] = [n for n in names if "coordinator" in n]
    [worker] = [n for n in names if "worker" in n]
    return coordinator, worker


@dataclass
class Prometheus:
    url: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5.0))

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query at "now"."""
        response = self.http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        assert body.get("status") == "success", f"{expr!r}: {body}"
        assert body["data"]["resultType"] == "vector", f"{expr!r}: {body['data']['resultType']}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, expr: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expr)]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def run_prometheus(workdir: Path, targets: dict[str, str]) -> Iterator[Prometheus]:
    """Prometheus on a free 127.0.0.1 port scraping `targets` (job name -> host:port) every second
    and evaluating the shipped rules every second; stopped by PID on exit."""
    assert PROMETHEUS is not None
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_PATH)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / "prometheus.log"
    argv = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(url=f"http://127.0.0.1:{port}", popen=popen, log_path=log_path)
    try:

        def ready() -> bool:
            assert popen.poll() is None, f"prometheus exited:\n{prom.log_tail()}"
            try:
                return prom.http.get(f"{prom.url}/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until("prometheus to be ready", ready, PROMETHEUS_READY_TIMEOUT_S)
        yield prom
    finally:
        prom.http.close()
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
        popen.wait()


def metrics_host_port(url: str) -> str:
    """'http://127.0.0.1:9464/metrics' -> '127.0.0.1:9464'."""
    return httpx.URL(url).netloc.decode()


@needs_prometheus
def test_prometheus_sees_injected_faults_and_every_panel_has_data(tmp_path: Path) -> None:
    coordinator_job, worker_job = shipped_job_names()
    worker_port = free_port()
    with (
        LocalCluster(tmp_path / "cluster", CLUSTER_CONFIG) as cluster,
        contextlib.ExitStack() as stack,
    ):
        cluster.start_sandbox()
        cluster.start_coordinator()
        # The worker names obs-rl explicitly (as real accounts always are): from then on its
        # per-account series exist at 0, so the first 429 moves the panels.
        cluster.start_worker(
            "obs-w1",
            platforms=("sandbox", "sandbox:obs-rl"),
            extra=["--metrics-listen", f"127.0.0.1:{worker_port}"],
        )
        cluster.wait_online(["obs-w1"])
        admin = stack.enter_context(SandboxAdmin(cluster.sandbox_url))
        targets = {
            coordinator_job: metrics_host_port(cluster.metrics_url),
            worker_job: f"127.0.0.1:{worker_port}",
        }
        with run_prometheus(tmp_path / "prometheus", targets) as prom, cluster.client() as client:
            # Both targets scraped: an operator's first check is the Targets page.
            def both_up() -> bool:
                up = {s["metric"]["job"]: s["value"][1] for s in prom.query("up")}
                return up == {coordinator_job: "1", worker_job: "1"}

            wait_until(f"up == 1 for {sorted(targets)}", both_up, FIRST_SCRAPE_TIMEOUT_S)

            # Traffic before the faults: every histogram series is born here, so later jobs
            # show as a rate (a series first scraped at 1 that never grows has rate 0).
            warmup = cluster.publish(client, "obs warm-up", ["sandbox:obs-ok"])
            wait_until(
                "the warm-up post's success in Prometheus",
                lambda: prom.values('sum(postroom_jobs_total{outcome="succeeded"})') == [1.0],
                EVENTS_TIMEOUT_S,
            )
            assert job_of(client, warmup).status == pb.JOB_STATUS_SUCCEEDED

            # Before any fault, the series a first fault increments are scraped at 0.
            born_at_zero = [
                'postroom_rate_limit_hits_total{platform="sandbox",account="obs-rl"} == 0',
                'postroom_rate_limit_gate_closed{platform="sandbox",account="obs-rl"} == 0',
                'postroom_worker_platform_requests_total{platform="sandbox",status="429"} == 0',
            ]
            wait_until(
                "the rate-limit series at 0 before the first 429",
                lambda: all(prom.values(expr) == [0.0] for expr in born_at_zero),
                EVENTS_TIMEOUT_S,
            )

            # Faults: one 429 (with Retry-After), one 500, one 401, each on its own account.
            admin.inject(
                "rate_limit", account="obs-rl", retry_after_seconds=RATE_LIMIT_RETRY_AFTER_S
            )
            admin.inject("server_error", account="obs-5xx")
            admin.inject("auth", account="obs-login")
            posts = {
                account: cluster.publish(client, f"obs {account}", [f"sandbox:{account}"])
                for account in ("obs-rl", "obs-5xx", "obs-login", "obs-ok")
            }

            # The injected events as an operator would query them, then every dashboard panel
            # and recording rule. Polled together from the moment of the faults: the "gates
            # closed now" table shows a gate only while it is closed (here, two seconds).
            events = [
                'postroom_rate_limit_hits_total{platform="sandbox",account="obs-rl"} >= 1',
                'postroom_rate_limit_gate_closed{platform="sandbox",account="obs-rl"} == 1',
                'postroom_retries_scheduled_total{platform="sandbox",reason="rate_limited"} >= 1',
                'postroom_retries_scheduled_total{platform="sandbox",reason="transient"} >= 1',
                'postroom_jobs_total{platform="sandbox",outcome="succeeded"} >= 4',
                'postroom_jobs_total{platform="sandbox",outcome="needs_login"} >= 1',
                'postroom_needs_login_accounts{platform="sandbox",account="obs-login"} == 1',
                'postroom_worker_platform_requests_total{platform="sandbox",status="429"} >= 1',
                'postroom_worker_platform_requests_total{platform="sandbox",status="500"} >= 1',
                'postroom_worker_platform_requests_total{platform="sandbox",status="401"} >= 1',
                # The rate-limit panels move on the account's very first 429.
                'postroom:rate_limit_hits:rate5m{platform="sandbox",account="obs-rl"} > 0',
                'postroom:worker_platform_requests:rate5m{platform="sandbox",status="429"} > 0',
                # The retry panel moves: the first retry of a reason shows in its rate.
                'postroom:retries_scheduled:rate5m{platform="sandbox",reason="rate_limited"} > 0',
                'postroom:retries_scheduled:rate5m{platform="sandbox",reason="transient"} > 0',
            ]
            panels = dashboard_exprs() + recording_rule_exprs()
            pending = list(dict.fromkeys(events + panels))
            last: dict[str, list[dict[str, Any]]] = {}

            def everything_seen() -> bool:
                for expr in list(pending):
                    last[expr] = prom.query(expr)
                    # A number, not NaN: histogram_quantile over no events is NaN ("No data").
                    if any(math.isfinite(float(s["value"][1])) for s in last[expr]):
                        pending.remove(expr)
                return not pending

            try:
                wait_until(
                    "the injected events and data from every dashboard and recording-rule "
                    "expression",
                    everything_seen,
                    PANELS_TIMEOUT_S,
                )
            except AssertionError as exc:
                detail = "\n".join(f"  {e!r} -> {last.get(e)}" for e in pending)
                raise AssertionError(f"{exc}; no finite sample from:\n{detail}") from None

            # What the operator's CLI says agrees with what the graphs say.
            statuses = {account: job_of(client, post).status for account, post in posts.items()}
            assert statuses == {
                "obs-rl": pb.JOB_STATUS_SUCCEEDED,
                "obs-5xx": pb.JOB_STATUS_SUCCEEDED,
                "obs-login": pb.JOB_STATUS_NEEDS_LOGIN,
                "obs-ok": pb.JOB_STATUS_SUCCEEDED,
            }, statuses

            # The coordinator goes away: its down alert starts (pending for its `for`).
            assert ALERT_NAME_COORDINATOR_DOWN in alert_rules()
            assert cluster.coordinator is not None
            cluster.coordinator.stop()
            alert = f'ALERTS{{alertname="{ALERT_NAME_COORDINATOR_DOWN}",job="{coordinator_job}"}}'
            [state] = wait_until(
                f"{ALERT_NAME_COORDINATOR_DOWN} to be pending",
                lambda: [s["metric"]["alertstate"] for s in prom.query(alert)],
                FIRST_SCRAPE_TIMEOUT_S,
            )
            assert state == "pending"
            # The worker is still scraped: only the coordinator is reported down.
            assert prom.values(f'up{{job="{worker_job}"}}') == [1.0]


# ---- traces -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _attrs(v.kvlist_value.values)
    return getattr(v, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    items: list[KeyValue] = list(kvs)
    return {kv.key: _value(kv.value) for kv in items}


class OtlpReceiver:
    """A minimal OTLP/HTTP (protobuf) trace receiver on 127.0.0.1, port chosen by the OS."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    receiver.errors.append(f"POST {self.path}")
                    self.send_error(404)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            service = str(_attrs(resource_spans.resource.attributes).get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            service=service,
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes=_attrs(s.attributes),
                            events=[(e.name, _attrs(e.attributes)) for e in s.events],
                            status_code=s.status.code,
                        )
                    )
        with self._lock:
            self.spans.extend(spans)

    def find(self, name: str, job_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [
                s
                for s in self.spans
                if s.name == name and s.attributes.get("postroom.job_id") == job_id
            ]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.parent_span_id == parent.span_id]

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def test_one_trace_per_attempt_crosses_the_process_boundary(tmp_path: Path) -> None:
    with OtlpReceiver() as otlp:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        config = ClusterConfig(
            heartbeat_interval_s=CLUSTER_CONFIG.heartbeat_interval_s,
            lease_ttl_s=CLUSTER_CONFIG.lease_ttl_s,
            retry_initial_s=CLUSTER_CONFIG.retry_initial_s,
            env=env,
        )
        with (
            LocalCluster(tmp_path / "cluster", config) as cluster,
            contextlib.ExitStack() as stack,
        ):
            cluster.start_sandbox()
            cluster.start_coordinator()
            cluster.start_worker("trace-w1")
            cluster.wait_online(["trace-w1"])
            admin = stack.enter_context(SandboxAdmin(cluster.sandbox_url))
            client = stack.enter_context(cluster.client())
            admin.inject("rate_limit", account="trace-rl", retry_after_seconds=1)
            ok_job = job_of(client, cluster.publish(client, "traced", ["sandbox:trace-ok"])).id
            rl_job = job_of(client, cluster.publish(client, "limited", ["sandbox:trace-rl"])).id

            # --- a plain successful attempt: one trace across both processes ---------------
            def ok_trace() -> tuple[ReceivedSpan, ReceivedSpan] | None:
                attempts = otlp.find("postroom.job.attempt", ok_job)
                runs = otlp.find("postroom.worker.run", ok_job)
                if len(attempts) == 1 and len(runs) == 1 and otlp.children(runs[0]):
                    return attempts[0], runs[0]
                return None

            attempt, run = wait_until(
                "the coordinator's attempt span and the worker's run span",
                ok_trace,
                SPANS_TIMEOUT_S,
            )
            assert attempt.service == "postroom-coordinator", attempt
            assert run.service == "postroom-worker", run
            assert run.trace_id == attempt.trace_id, (attempt, run)
            assert run.parent_span_id == attempt.span_id, (attempt, run)
            for span in (attempt, run):
                assert span.attributes.get("postroom.platform") == "sandbox", span
                assert span.attributes.get("postroom.account") == "trace-ok", span
                assert span.attributes.get("postroom.attempt") == 1, span
            assert attempt.attributes.get("postroom.outcome") == "succeeded", attempt

            def step_spans() -> list[ReceivedSpan] | None:
                steps = [s for s in otlp.children(run) if s.name == "postroom.worker.step"]
                last_step = any(s.attributes.get("postroom.step") == "report" for s in steps)
                return steps if last_step else None

            steps = wait_until("the worker's step spans", step_spans, SPANS_TIMEOUT_S)
            for step in steps:
                assert step.service == "postroom-worker", step
                assert step.trace_id == attempt.trace_id, step
            step_names = [str(s.attributes.get("postroom.step")) for s in steps]
            for expected in ("prepare", "commit_permit", "commit", "report"):
                assert expected in step_names, step_names

            # --- a rate-limited attempt, then its retry in a trace of its own -------------
            def rl_attempts() -> list[ReceivedSpan] | None:
                attempts = otlp.find("postroom.job.attempt", rl_job)
                done = any(a.attributes.get("postroom.outcome") == "succeeded" for a in attempts)
                if len(attempts) < 2 or not done:
                    return None
                return sorted(attempts, key=lambda a: int(a.attributes["postroom.attempt"]))

            first, *_, last = wait_until(
                "both attempts of the rate-limited job", rl_attempts, SPANS_TIMEOUT_S
            )
            assert first.attributes.get("postroom.attempt") == 1, first
            assert first.attributes.get("postroom.error_class") == "RATE_LIMITED", first
            events = dict(first.events)
            assert events.get("retry_scheduled", {}).get("reason") == "rate_limited", first.events
            assert events.get("gate_closed", {}).get("until", 0) > 0, first.events
            assert first.attributes.get("postroom.retry_after_s", 0) > 0, first
            assert last.attributes.get("postroom.attempt") == 2, last
            assert last.trace_id != first.trace_id, "each attempt is a trace of its own"

            [limited_run] = wait_until(
                "the worker's run span of the rate-limited attempt",
                lambda: [
                    r
                    for r in otlp.find("postroom.worker.run", rl_job)
                    if r.trace_id == first.trace_id
                ],
                SPANS_TIMEOUT_S,
            )
            assert limited_run.parent_span_id == first.span_id, limited_run
            assert limited_run.status_code == Status.STATUS_CODE_ERROR, limited_run
            assert limited_run.attributes.get("postroom.error_class") == "RATE_LIMITED"
            assert not otlp.errors, otlp.errors
